#include "channel.h"
#include "conn.h"
#include "err.h"
#include "http.h"
#include "log.h"
#include "presence.h"
#include "script.h"
#include "server.h"
#include "util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_PREFIX "base64url.bearer.phx."

/* ---- outbound frames ------------------------------------------------------ */

static void send_text(hd_conn *c, const hd_str *s)
{
    if (s->oom) {
        hd_error("conn %llu: out of memory building a frame", (unsigned long long)c->id);
        return;
    }
    hd_buf *f = hd_ws_frame(HD_WS_TEXT, s->p, s->len);
    if (!f) return;
    hd_conn_send(c, f);
    hd_buf_unref(f);
}

/* [jr, ref, topic, "phx_reply", {"status":status,"response":response}] */
static void reply(hd_conn *c, const char *jr, const char *ref, const char *topic,
                  const char *status, const char *response)
{
    hd_str s = HD_STR_INIT;
    hd_str_addc(&s, '[');
    hd_str_add_json_or_null(&s, jr);
    hd_str_addc(&s, ',');
    hd_str_add_json_or_null(&s, ref);
    hd_str_addc(&s, ',');
    hd_str_add_json_or_null(&s, topic);
    hd_str_printf(&s, ",\"phx_reply\",{\"status\":\"%s\",\"response\":%s}]", status, response);
    send_text(c, &s);
    hd_str_free(&s);
}

static void reply_error(hd_conn *c, const char *jr, const char *ref, const char *topic,
                        const char *reason)
{
    hd_str r = HD_STR_INIT;
    hd_str_adds(&r, "{\"reason\":");
    hd_str_add_json(&r, reason, strlen(reason));
    hd_str_addc(&r, '}');
    reply(c, jr, ref, topic, "error", r.p ? r.p : "{}");
    hd_str_free(&r);
}

/* [jr, jr, topic, "phx_close", {}] */
static void send_phx_close(hd_conn *c, const char *jr, const char *topic)
{
    hd_str s = HD_STR_INIT;
    hd_str_addc(&s, '[');
    hd_str_add_json_or_null(&s, jr);
    hd_str_addc(&s, ',');
    hd_str_add_json_or_null(&s, jr);
    hd_str_addc(&s, ',');
    hd_str_add_json_or_null(&s, topic);
    hd_str_adds(&s, ",\"phx_close\",{}]");
    send_text(c, &s);
    hd_str_free(&s);
}

hd_buf *hd_channel_msg_frame(const char *topic, size_t tlen, const char *event, size_t elen,
                             const char *data_json, size_t dlen)
{
    hd_str s = HD_STR_INIT;
    hd_str_adds(&s, "[null,null,");
    hd_str_add_json(&s, topic, tlen);
    hd_str_adds(&s, ",\"msg\",{\"data\":");
    hd_str_add(&s, data_json, dlen);
    hd_str_adds(&s, ",\"event\":");
    hd_str_add_json(&s, event, elen);
    hd_str_adds(&s, "}]");
    hd_buf *f = s.oom ? NULL : hd_ws_frame(HD_WS_TEXT, s.p, s.len);
    hd_str_free(&s);
    return f;
}

/* ---- subscriptions ---------------------------------------------------------- */

static hd_sub *find_sub(hd_ws_conn *w, const char *topic, size_t len)
{
    for (hd_sub *s = w->subs; s; s = s->cnext)
        if (s->topic->len == len && memcmp(s->topic->name, topic, len) == 0) return s;
    return NULL;
}

static void drop_sub(hd_conn *c, hd_sub *sub)
{
    hd_ws_conn *w = c->ws;
    for (hd_sub **pp = &w->subs; *pp; pp = &(*pp)->cnext) {
        if (*pp == sub) {
            *pp = sub->cnext;
            break;
        }
    }
    w->nsubs--;
    hd_presence_untrack(c->srv, sub);
    hd_topics_unsubscribe(&c->srv->topics, sub);
}

void hd_channel_unlink_all(hd_conn *c)
{
    hd_ws_conn *w = c->ws;
    if (!w) return;
    while (w->subs) {
        hd_sub *s = w->subs;
        w->subs = s->cnext;
        hd_presence_untrack(c->srv, s);
        hd_topics_unsubscribe(&c->srv->topics, s);
    }
    w->nsubs = 0;
}

void hd_channel_free(hd_ws_conn *w)
{
    if (!w) return;
    hd_ws_parser_free(&w->parser);
    free(w->token);
    free(w->identity);
    free(w->assigns);
    free(w);
}

const char *hd_channel_identity(hd_conn *c) { return c->ws ? c->ws->identity : NULL; }

const char *hd_channel_assigns(hd_conn *c) { return c->ws ? c->ws->assigns : NULL; }

size_t hd_channel_recheck(hd_conn *c)
{
    hd_ws_conn *w = c->ws;
    size_t closed = 0;
    hd_sub *s = w ? w->subs : NULL;
    while (s && hd_conn_open(c)) {
        hd_sub *next = s->cnext;
        hd_str reply = HD_STR_INIT;
        char reason[256];
        if (!hd_script_join(c->srv, c, s->topic->name, s->topic->len, NULL, &reply, NULL, reason,
                            sizeof reason) &&
            hd_conn_open(c)) {
            send_phx_close(c, s->join_ref, s->topic->name);
            drop_sub(c, s);
            closed++;
        }
        hd_str_free(&reply);
        s = next;
    }
    return closed;
}

/* ---- Phoenix messages ------------------------------------------------------ */

static void on_join(hd_conn *c, const char *jr, const char *ref, const char *topic, size_t tlen,
                    json_t *payload)
{
    hd_ws_conn *w = c->ws;
    hd_server *srv = c->srv;
    if (tlen == 0 || tlen > HD_TOPIC_MAX_BYTES || memchr(topic, 0, tlen)) {
        srv->m.joins_refused++;
        reply_error(c, jr, ref, topic, "invalid topic");
        return;
    }
    hd_str answer = HD_STR_INIT, meta = HD_STR_INIT;
    char reason[256];
    if (!hd_script_join(srv, c, topic, tlen, payload, &answer, &meta, reason, sizeof reason)) {
        hd_str_free(&answer);
        hd_str_free(&meta);
        srv->m.joins_refused++;
        if (hd_conn_open(c)) reply_error(c, jr, ref, topic, reason);
        return;
    }
    hd_sub *old = find_sub(w, topic, tlen);
    if (old) {
        /* A duplicate join closes the old channel first (Phoenix does). */
        send_phx_close(c, old->join_ref, topic);
        drop_sub(c, old);
    } else if (w->nsubs >= srv->cfg->max_topics_per_socket) {
        hd_str_free(&answer);
        hd_str_free(&meta);
        srv->m.joins_refused++;
        reply_error(c, jr, ref, topic, "too many channels joined");
        return;
    }
    hd_sub *s = hd_topics_subscribe(&srv->topics, topic, tlen, c, jr ? jr : ref);
    if (!s) {
        hd_error("conn %llu: out of memory joining a topic", (unsigned long long)c->id);
        hd_str_free(&answer);
        hd_str_free(&meta);
        reply_error(c, jr, ref, topic, "join crashed");
        return;
    }
    s->cnext = w->subs;
    w->subs = s;
    w->nsubs++;
    srv->m.joins++;
    /* The topic hook runs here once per topic and reload; presence tracking
     * follows the policy. */
    const hd_topic_policy *p = hd_topic_policy_of(srv, s->topic);
    if (hd_presence_track(srv, s, meta.p) != 0) hd_error("presence: out of memory tracking a join");
    reply(c, jr, ref, topic, "ok", answer.p ? answer.p : "{}");
    if (p->presence && p->tracked) hd_presence_send_state(srv, s);
    hd_str_free(&answer);
    hd_str_free(&meta);
}

static void on_leave(hd_conn *c, const char *jr, const char *ref, const char *topic, size_t tlen)
{
    hd_sub *s = find_sub(c->ws, topic, tlen);
    /* A leave carrying a stale join_ref raced a newer join: drop it. */
    if (s && jr && s->join_ref && strcmp(jr, s->join_ref) != 0) return;
    reply(c, jr, ref, topic, "ok", "{}");
    if (!s) return;
    send_phx_close(c, s->join_ref, topic);
    drop_sub(c, s);
}

static const char *str_or_null(json_t *v, int *ok)
{
    if (json_is_null(v)) return NULL;
    if (json_is_string(v)) return json_string_value(v);
    *ok = 0;
    return NULL;
}

/* A client push on a joined topic goes to the message hook, which may
 * answer; without one there is no reply. */
static void on_client_push(hd_conn *c, const char *jr, const char *ref, const char *topic,
                           size_t tlen, const char *event, json_t *payload)
{
    hd_str answer = HD_STR_INIT;
    char reason[256];
    int r = hd_script_message(c->srv, c, topic, tlen, event, payload, &answer, reason,
                              sizeof reason);
    if (r == 1 && hd_conn_open(c)) reply(c, jr, ref, topic, "ok", answer.p ? answer.p : "{}");
    else if (r == 2 && hd_conn_open(c)) reply_error(c, jr, ref, topic, reason);
    hd_str_free(&answer);
}

/* Handles one text message; returns 0, or non-zero after closing. */
static int on_phoenix(hd_conn *c, const uint8_t *data, size_t len)
{
    hd_server *srv = c->srv;
    srv->m.ws_msgs_in++;
    json_error_t jerr;
    json_t *msg = json_loadb((const char *)data, len, 0, &jerr);
    int ok = msg && json_is_array(msg) && json_array_size(msg) >= 5;
    const char *jr = NULL, *ref = NULL;
    json_t *topic = NULL, *event = NULL;
    if (ok) {
        jr = str_or_null(json_array_get(msg, 0), &ok);
        ref = str_or_null(json_array_get(msg, 1), &ok);
        topic = json_array_get(msg, 2);
        event = json_array_get(msg, 3);
        ok = ok && json_is_string(topic) && json_is_string(event) &&
             json_is_object(json_array_get(msg, 4));
    }
    if (!ok) {
        srv->m.ws_bad_msgs++;
        hd_debug("conn %llu: not a Phoenix v2 message", (unsigned long long)c->id);
        json_decref(msg);
        hd_conn_ws_close(c, 1007, "invalid Phoenix message");
        return 1;
    }
    const char *t = json_string_value(topic), *ev = json_string_value(event);
    size_t tlen = json_string_length(topic);
    if (strcmp(ev, "heartbeat") == 0 && strcmp(t, "phoenix") == 0) {
        reply(c, NULL, ref, t, "ok", "{}");
    } else if (strcmp(ev, "phx_join") == 0) {
        on_join(c, jr, ref, t, tlen, json_array_get(msg, 4));
    } else if (strcmp(ev, "phx_leave") == 0) {
        on_leave(c, jr, ref, t, tlen);
    } else {
        hd_sub *s = find_sub(c->ws, t, tlen);
        if (!s) {
            reply_error(c, NULL, ref, t, "unmatched topic");
        } else if (!jr || !s->join_ref || strcmp(jr, s->join_ref) == 0) {
            /* (A stale join_ref is dropped silently, as Phoenix does.) */
            on_client_push(c, jr, ref, t, tlen, ev, json_array_get(msg, 4));
        }
    }
    json_decref(msg);
    return 0;
}

static int on_message(void *ud, int opcode, uint8_t *data, size_t len)
{
    hd_conn *c = ud;
    if (c->flags & HD_CF_WS_CLOSE_SENT) return 0; /* closing: only the close frame matters */
    if (opcode == HD_WS_BINARY) {
        hd_conn_ws_close(c, 1003, "binary frames are not supported");
        return 1;
    }
    return on_phoenix(c, data, len);
}

static int on_control(void *ud, int opcode, uint8_t *data, size_t len)
{
    hd_conn *c = ud;
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
        hd_conn_finish(c, c->srv->cfg->ws_close_ms);
    } else {
        /* Echo the peer's code (RFC 6455 5.5.1). */
        uint16_t code = len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 0;
        hd_conn_ws_close(c, code, "");
    }
    c->flags |= HD_CF_NO_INPUT;
    return 1;
}

static const hd_ws_callbacks ws_callbacks = {on_message, on_control};

void hd_channel_on_read(hd_conn *c, uint8_t *data, size_t len)
{
    int rc = hd_ws_parse(&c->ws->parser, data, len, &ws_callbacks, c, NULL);
    if (rc >= 0) return;
    /* The framing is broken: nothing after this point can be trusted.
     * Send the close frame and end the connection once it is written. */
    uint16_t code = hd_ws_close_code(rc);
    c->srv->m.ws_bad_msgs++;
    hd_debug("conn %llu: WebSocket error %s: closing with %u", (unsigned long long)c->id,
             hd_strerror(rc), code);
    hd_conn_ws_close(c, code, hd_strerror(rc));
    c->flags |= HD_CF_NO_INPUT;
    hd_conn_finish(c, c->srv->cfg->ws_close_ms);
}

/* ---- handshake ---------------------------------------------------------------- */

/* Finds the Phoenix subprotocol offers; sets *phoenix and *token (malloc'd). */
static void parse_protocols(const char *v, size_t len, int *phoenix, char **token)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == ',' || v[i] == '\t')) i++;
        size_t st = i;
        while (i < len && v[i] != ',' && v[i] != ' ' && v[i] != '\t') i++;
        size_t n = i - st;
        const char *p = v + st;
        size_t pl = sizeof TOKEN_PREFIX - 1;
        if (n == 7 && memcmp(p, "phoenix", 7) == 0) {
            *phoenix = 1;
        } else if (n > pl && memcmp(p, TOKEN_PREFIX, pl) == 0 && !*token) {
            uint8_t *out = malloc(n - pl + 4);
            long dl = out ? hd_base64_decode(p + pl, n - pl, out) : -1;
            if (dl >= 0) {
                out[dl] = 0;
                *token = (char *)out;
            } else {
                free(out);
            }
        }
    }
}

void hd_channel_handshake(hd_conn *c, hd_http_req *r, int upgrade)
{
    hd_server *srv = c->srv;
    size_t ul = 0, cl = 0, vl = 0, kl = 0, pl = 0;
    const char *up = hd_http_header(r, "upgrade", &ul);
    const char *conn = hd_http_header(r, "connection", &cl);
    const char *ver = hd_http_header(r, "sec-websocket-version", &vl);
    const char *key = hd_http_header(r, "sec-websocket-key", &kl);
    const char *proto = hd_http_header(r, "sec-websocket-protocol", &pl);
    char vsn[32], accept[29];
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
    } else if (!hd_http_query_param(r, "vsn", vsn, sizeof vsn) || strncmp(vsn, "2.", 2) != 0) {
        hd_http_error(c, r, 403, "unsupported vsn", NULL, 1);
    } else if (srv->state != HD_READY) {
        hd_http_error(c, r, 503, "server is shutting down", NULL, 1);
    } else if (srv->nws >= srv->ws_cap) {
        hd_http_error(c, r, 503, "server at capacity", NULL, 1);
    } else {
        int phoenix = 0;
        char *token = NULL, *identity = NULL, *assigns = NULL;
        char reason[256];
        if (proto) parse_protocols(proto, pl, &phoenix, &token);
        if (!hd_script_authenticate(srv, c, r, token, &identity, &assigns, reason,
                                    sizeof reason)) {
            free(token);
            hd_http_error(c, r, 403, reason, NULL, 1);
            srv->m.ws_rejected++;
            return;
        }
        hd_ws_conn *w = calloc(1, sizeof *w);
        if (!w) {
            free(token);
            free(identity);
            free(assigns);
            hd_http_error(c, r, 503, "out of memory", NULL, 1);
            srv->m.ws_rejected++;
            return;
        }
        hd_ws_parser_init(&w->parser, srv->cfg->max_message_bytes);
        w->token = token;
        w->identity = identity;
        w->assigns = assigns;
        char head[256];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                         accept, phoenix ? "Sec-WebSocket-Protocol: phoenix\r\n" : "");
        hd_conn_send_copy(c, head, (size_t)n);
        c->kind = HD_CONN_WS;
        c->ws = w;
        srv->nws++;
        srv->m.ws_upgrades++;
        srv->m.http_requests++;
        return;
    }
    srv->m.ws_rejected++;
}
