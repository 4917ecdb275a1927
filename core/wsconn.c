#include "wsconn.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hd_ws_ctx *ctx_of(const hd_conn *c) { return (hd_ws_ctx *)c->ops; }

/* ---- the close handshake ------------------------------------------------------- */

static void queue_close_frame(hd_conn *c, uint16_t code, const char *reason)
{
    hd_buf *f = hd_ws_close_frame(code, reason);
    int rc = f ? hd_conn_send_last(c, f) : HD_ENOMEM;
    hd_buf_unref(f);
    c->flags |= HD_CF_WS_CLOSE_SENT;
    if (rc) {
        /* No close frame can go out: end the connection instead of
         * waiting for a handshake that cannot happen. */
        hd_error("conn %llu: out of memory queueing a close frame", (unsigned long long)c->id);
        hd_conn_close(c);
        return;
    }
    if (code >= 1000 && code <= 1015) ctx_of(c)->st->ws_closes_sent[code - 1000]++;
}

/* Starts the close handshake with code and reason: queues the close frame
 * (after frames already queued), stops deliveries, and closes TCP when the
 * peer's close arrives or ws_close_ms passes (the sweeper). */
static void ws_close(hd_conn *c, uint16_t code, const char *reason)
{
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return;
    hd_ws_ctx *w = ctx_of(c);
    w->h->on_close(w->ud, c);
    queue_close_frame(c, code, reason);
    c->deadline = uv_now(c->net->loop) + w->cfg->ws_close_ms;
    /* Once both close frames have crossed, the server closes TCP first. */
    if (c->flags & HD_CF_WS_CLOSE_RECV) hd_conn_finish(c, w->cfg->ws_close_ms);
}

/* ---- frames in ------------------------------------------------------------------ */

static int on_message(void *ud, int opcode, uint8_t *data, size_t len)
{
    hd_conn *c = ud;
    if (c->flags & HD_CF_WS_CLOSE_SENT) return 0; /* closing: only the close frame matters */
    hd_ws_ctx *w = ctx_of(c);
    return w->h->on_message(w->ud, c, opcode, data, len);
}

static int on_control(void *ud, int opcode, uint8_t *data, size_t len)
{
    hd_conn *c = ud;
    hd_ws_ctx *w = ctx_of(c);
    if (opcode == HD_WS_PING) {
        if (c->flags & HD_CF_WS_CLOSE_SENT) return 0;
        hd_buf *f = hd_ws_frame(HD_WS_PONG, data, len);
        if (f) {
            hd_conn_send(c, f);
            hd_buf_unref(f);
        }
        return 0;
    }
    if (opcode != HD_WS_CLOSE) return 0;
    c->flags |= HD_CF_WS_CLOSE_RECV;
    if (c->flags & HD_CF_WS_CLOSE_SENT) {
        hd_conn_finish(c, w->cfg->ws_close_ms);
    } else {
        /* Echo the peer's code (RFC 6455 5.5.1). */
        uint16_t code = len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 0;
        ws_close(c, code, "");
    }
    c->flags |= HD_CF_NO_INPUT;
    return 1;
}

static const hd_ws_callbacks parser_callbacks = {on_message, on_control};

static void ws_on_read(hd_conn *c, uint8_t *data, size_t len)
{
    hd_ws_parser *p = c->proto;
    int rc = hd_ws_parse(p, data, len, &parser_callbacks, c, NULL);
    if (rc >= 0) return;
    /* The framing is broken: nothing after this point can be trusted.
     * Send the close frame and end the connection once it is written. */
    hd_ws_ctx *w = ctx_of(c);
    uint16_t code = hd_ws_close_code(rc);
    w->st->ws_bad_msgs++;
    hd_debug("conn %llu: WebSocket error %s: closing with %u", (unsigned long long)c->id,
             hd_strerror(rc), code);
    ws_close(c, code, hd_strerror(rc));
    c->flags |= HD_CF_NO_INPUT;
    hd_conn_finish(c, w->cfg->ws_close_ms);
}

static void ws_on_closed(hd_conn *c)
{
    hd_ws_ctx *w = ctx_of(c);
    w->h->on_close(w->ud, c);
}

static void ws_free(hd_conn *c)
{
    hd_ws_parser *p = c->proto;
    if (!p) return;
    hd_ws_parser_free(p);
    free(p);
    c->proto = NULL;
}

void hd_wsconn_init(hd_ws_ctx *w, const hd_config *cfg, hd_stats *st, const hd_ws_handler *h,
                    void *ud)
{
    memset(w, 0, sizeof *w);
    w->ops.on_read = ws_on_read;
    w->ops.close = ws_close;
    w->ops.on_closed = ws_on_closed;
    w->ops.free = ws_free;
    w->cfg = cfg;
    w->st = st;
    w->h = h;
    w->ud = ud;
}

/* ---- the handshake ---------------------------------------------------------------- */

int hd_wsconn_check(hd_conn *c, hd_http_req *r, int upgrade, char accept[29])
{
    size_t ul = 0, cl = 0, vl = 0, kl = 0;
    const char *up = hd_http_header(r, "upgrade", &ul);
    const char *conn = hd_http_header(r, "connection", &cl);
    const char *ver = hd_http_header(r, "sec-websocket-version", &vl);
    const char *key = hd_http_header(r, "sec-websocket-key", &kl);
    /* A refused upgrade request closes the connection: the bytes after it
     * may already be WebSocket frames. */
    int close = upgrade;
    if (r->method != HTTP_GET) {
        hd_http_error(c, r, 405, "method not allowed", "Allow: GET\r\n", close);
    } else if (!up || !hd_header_has_token(up, ul, "websocket")) {
        hd_http_error(c, r, 426, "upgrade required: this is a WebSocket endpoint",
                      "Upgrade: websocket\r\n", close);
    } else if (!conn || !hd_header_has_token(conn, cl, "upgrade") || !upgrade) {
        hd_http_error(c, r, 400, "bad websocket handshake: Connection must include Upgrade",
                      NULL, 1);
    } else if (!ver || vl != 2 || memcmp(ver, "13", 2) != 0) {
        hd_http_error(c, r, 400, "bad websocket handshake: Sec-WebSocket-Version must be 13",
                      "Sec-WebSocket-Version: 13\r\n", 1);
    } else if (!key || hd_ws_accept_key(key, kl, accept) < 0) {
        hd_http_error(c, r, 400, "bad websocket handshake: invalid Sec-WebSocket-Key", NULL, 1);
    } else {
        return 0;
    }
    return -1;
}

int hd_wsconn_accept(hd_ws_ctx *w, hd_conn *c, hd_http_req *r, const char accept[29],
                     const char *subprotocol)
{
    hd_ws_parser *p = malloc(sizeof *p);
    if (!p) {
        hd_http_error(c, r, 503, "out of memory", NULL, 1);
        return HD_ENOMEM;
    }
    hd_ws_parser_init(p, w->cfg->max_message_bytes);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     subprotocol ? subprotocol : "", subprotocol ? "\r\n" : "");
    hd_conn_send_copy(c, head, (size_t)n);
    /* The HTTP state is the HTTP layer's to free once this request returns. */
    hd_conn_upgrade(c, HD_CONN_WS, &w->ops, p);
    w->st->ws_upgrades++;
    w->st->http_requests++;
    return 0;
}
