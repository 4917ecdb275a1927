#include "wsconn.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hd_ws_ctx *ctx_of(const hd_conn *c) { return (hd_ws_ctx *)c->ops; }

/* Refused messages going on this long (each less than a bucket's refill
 * after the one before) close the connection with 1008. */
#define RATE_CLOSE_MS 5000

/* A WebSocket connection's state (c->proto). */
typedef struct ws_state {
    hd_ws_parser p;
    uint32_t pending_since; /* loop time (ms, modulo 2^32, never 0) a partial frame or
                             * message began; 0: none */
    uint32_t held;          /* bytes of a partial message, counted in inbound_bytes */
    hd_ws_rate rate;
} ws_state;

/* Brings s->held, and the node's total, to what the parser holds now. */
static void account(hd_net *net, ws_state *s)
{
    uint32_t now = s->p.msg ? s->p.msg_len : 0;
    net->inbound_bytes = net->inbound_bytes - s->held + now;
    s->held = now;
}

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
    w->h->on_close(w->ud, c, reason && *reason ? reason : "closed");
    /* The handler's hooks may have closed c meanwhile (herald.disconnect). */
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return;
    queue_close_frame(c, code, reason);
    c->deadline = uv_now(c->net->loop) + w->cfg->ws_close_ms;
    /* Once both close frames have crossed, the server closes TCP first. */
    if (c->flags & HD_CF_WS_CLOSE_RECV) hd_conn_finish(c, w->cfg->ws_close_ms);
}

/* Nothing more from the peer can be trusted: send the close frame, drop
 * any partial message, and end the connection once the frame is written. */
static void ws_abort(hd_conn *c, uint16_t code, const char *reason)
{
    ws_state *s = c->proto;
    ws_close(c, code, reason);
    c->flags |= HD_CF_NO_INPUT;
    hd_ws_parser_free(&s->p);
    s->pending_since = 0;
    account(c->net, s);
    hd_conn_finish(c, ctx_of(c)->cfg->ws_close_ms);
}

/* ---- the client message rate ---------------------------------------------------- */

void hd_ws_rate_init(hd_ws_rate *r, const hd_config *cfg, uint64_t now)
{
    r->tokens = (float)cfg->client_messages_burst;
    r->at = (uint32_t)now;
    r->refused_at = (uint32_t)now - RATE_CLOSE_MS;
    r->refusing = 0;
}

/* Takes a token for a message arriving at now: 1, or 0 when the bucket
 * holds less than one (the message is refused). */
static int rate_take(hd_ws_rate *r, const hd_config *cfg, uint32_t now)
{
    float burst = (float)cfg->client_messages_burst;
    float t = r->tokens + (float)(now - r->at) * ((float)cfg->client_messages_per_s / 1000.0f);
    r->at = now;
    r->tokens = t < burst ? t : burst;
    if (r->tokens < 1) return 0;
    r->tokens -= 1;
    return 1;
}

/* Records a refusal at now; returns 1 when refusals have gone on for
 * RATE_CLOSE_MS. A run of refusals ends when none came for as long as an
 * untouched bucket takes to refill from empty (burst / rate, at most
 * RATE_CLOSE_MS): a client that bursts and then waits starts afresh, one
 * that keeps sending into an empty bucket does not. */
static int rate_refused(hd_ws_rate *r, const hd_config *cfg, uint32_t now)
{
    uint64_t refill = (1000ull * cfg->client_messages_burst + cfg->client_messages_per_s - 1) /
                      cfg->client_messages_per_s;
    uint32_t gap = now - r->refused_at;
    r->refusing = gap < refill && gap < RATE_CLOSE_MS ? r->refusing + gap : 0;
    r->refused_at = now;
    return r->refusing >= RATE_CLOSE_MS;
}

int hd_ws_rate_check(hd_ws_rate *r, const hd_config *cfg, hd_stats *st, const hd_conn *c)
{
    if (!cfg->client_messages_per_s) return HD_WS_RATE_OK;
    uint32_t now = (uint32_t)uv_now(c->net->loop);
    if (rate_take(r, cfg, now)) return HD_WS_RATE_OK;
    st->client_msgs_limited++;
    if (!rate_refused(r, cfg, now)) return HD_WS_RATE_REFUSED;
    st->client_rate_closes++;
    hd_info("conn %llu: closing with 1008: messages over limits.client_messages_per_s refused "
            "for %u ms",
            (unsigned long long)c->id, (unsigned)r->refusing);
    return HD_WS_RATE_CLOSE;
}

/* ---- frames in ------------------------------------------------------------------ */

/* Every data message counts against the rate (control frames do not: a
 * ping costs a pong, never the application). Over it, the handler answers
 * the message as refused; refusals going on for RATE_CLOSE_MS close. */
static int on_message(void *ud, int opcode, uint8_t *data, size_t len)
{
    hd_conn *c = ud;
    if (c->flags & HD_CF_WS_CLOSE_SENT) return 0; /* closing: only the close frame matters */
    hd_ws_ctx *w = ctx_of(c);
    ws_state *s = c->proto;
    int refused = hd_ws_rate_check(&s->rate, w->cfg, w->st, c);
    if (refused == HD_WS_RATE_CLOSE) {
        ws_abort(c, 1008, "message rate exceeded");
        return 1;
    }
    return w->h->on_message(w->ud, c, opcode, data, len, refused);
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

/* All partial messages together (and partial HTTP bodies, http.c) are
 * over limits.max_inbound_bytes: close the WebSocket connections holding
 * the largest until they are not (or none holds any). A linear walk,
 * only when over the limit. */
static void shed_inbound(hd_ws_ctx *w, hd_net *net)
{
    while (net->inbound_bytes > w->cfg->max_inbound_bytes) {
        hd_conn *big = NULL;
        size_t most = 0;
        for (hd_conn *c = net->conns; c; c = c->next) {
            if (c->kind != HD_CONN_WS || c->ops != &w->ops || (c->flags & HD_CF_CLOSED)) continue;
            ws_state *s = c->proto;
            if (s && s->held > most) most = s->held, big = c;
        }
        if (!big) return; /* cannot happen: the total is the sum of the helds */
        w->st->ws_inbound_closes++;
        hd_info("conn %llu: closing with 1009: its partial message (%zu bytes) is the largest and "
                "all together are over limits.max_inbound_bytes",
                (unsigned long long)big->id, most);
        ws_abort(big, 1009, "inbound memory limit");
    }
}

static void ws_on_read(hd_conn *c, uint8_t *data, size_t len)
{
    ws_state *s = c->proto;
    hd_ws_ctx *w = ctx_of(c);
    int rc = hd_ws_parse(&s->p, data, len, &parser_callbacks, c, NULL);
    if (rc >= 0) {
        if (!hd_ws_parser_pending(&s->p)) s->pending_since = 0;
        else if (!s->pending_since) s->pending_since = (uint32_t)uv_now(c->net->loop) | 1;
        account(c->net, s);
        if (c->net->inbound_bytes > w->cfg->max_inbound_bytes) shed_inbound(w, c->net);
        return;
    }
    uint16_t code = hd_ws_close_code(rc);
    w->st->ws_bad_msgs++;
    hd_debug("conn %llu: WebSocket error %s: closing with %u", (unsigned long long)c->id,
             hd_strerror(rc), code);
    ws_abort(c, code, hd_strerror(rc));
}

int hd_wsconn_check_message(hd_conn *c, uint64_t now)
{
    ws_state *s = c->kind == HD_CONN_WS ? c->proto : NULL;
    if (!s || !s->pending_since) return 0;
    hd_ws_ctx *w = ctx_of(c);
    if ((uint32_t)((uint32_t)now - s->pending_since) < w->cfg->ws_message_ms) return 0;
    w->st->ws_message_timeouts++;
    hd_debug("conn %llu: WebSocket message not complete in time: closing with 1008",
             (unsigned long long)c->id);
    ws_abort(c, 1008, "message not complete in time");
    return 1;
}

static void ws_on_closed(hd_conn *c)
{
    hd_ws_ctx *w = ctx_of(c);
    w->h->on_close(w->ud, c, "closed");
}

static void ws_free(hd_conn *c)
{
    ws_state *s = c->proto;
    if (!s) return;
    hd_ws_parser_free(&s->p);
    account(c->net, s);
    free(s);
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
    ws_state *s = calloc(1, sizeof *s);
    if (!s) {
        hd_http_error(c, r, 503, "out of memory", NULL, 1);
        return HD_ENOMEM;
    }
    hd_ws_parser_init(&s->p, w->cfg->max_message_bytes);
    hd_ws_rate_init(&s->rate, w->cfg, uv_now(c->net->loop));
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     subprotocol ? subprotocol : "", subprotocol ? "\r\n" : "");
    hd_conn_send_copy(c, head, (size_t)n);
    /* The HTTP state is the HTTP layer's to free once this request returns. */
    hd_conn_upgrade(c, HD_CONN_WS, &w->ops, s);
    w->st->ws_upgrades++;
    w->st->http_requests++;
    return 0;
}
