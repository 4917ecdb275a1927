#include "longpoll.h"
#include "err.h"
#include "log.h"
#include "util.h"
#include "ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CORS "Access-Control-Allow-Origin: *\r\n"
#define PREFLIGHT                                                                               \
    CORS "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"                                  \
         "Access-Control-Allow-Headers: content-type, x-phoenix-authtoken, "                     \
         "x-phoenix-longpoll-token, x-requested-with, authorization\r\n"                         \
         "Access-Control-Max-Age: 86400\r\n"

/* One message of a POST: where it is in the batch's bytes. */
typedef struct lp_item {
    size_t off, len;
    int opcode;
} lp_item;

/* A POST's messages not yet handed on (the session's reading is paused:
 * a hook of its waits, and its queue behind the hook is full). */
typedef struct lp_batch {
    size_t n, next;              /* items, and the first not handed on */
    char *bytes;
    lp_item items[];
} lp_batch;

/* A session's state (c->proto). */
typedef struct lp_session {
    struct lp_session *prev, *next; /* the context's deadline list */
    hd_conn *c;                  /* the session */
    uint64_t deadline;           /* on the list: the held poll's end, or the window's */
    uint64_t poll_id;            /* the HTTP connection whose poll is held, or 0 */
    uint64_t post_id;            /* the HTTP connection whose POST waits, or 0 */
    lp_batch *batch;             /* that POST's messages not yet handed on */
    hd_ws_rate rate;             /* limits.client_messages_per_s */
    uint8_t listed, expired, ended;
} lp_session;

static hd_lp_ctx *ctx_of(const hd_conn *c) { return (hd_lp_ctx *)c->ops; }

/* ---- tokens ------------------------------------------------------------------------ */

static void sign(const uint8_t secret[32], uint64_t id, uint8_t mac[32])
{
    uint8_t msg[8 + 9];
    memcpy(msg, "herald-lp", 9);
    for (int i = 0; i < 8; i++) msg[9 + i] = (uint8_t)(id >> (8 * i));
    hd_hmac_sha256(secret, 32, msg, sizeof msg, mac);
}

void hd_lp_token(const uint8_t secret[32], uint64_t id, char out[HD_LP_TOKEN_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t mac[32];
    sign(secret, id, mac);
    for (int i = 0; i < 16; i++) out[i] = hex[(id >> (60 - 4 * i)) & 15];
    for (int i = 0; i < 16; i++) {
        out[16 + 2 * i] = hex[mac[i] >> 4];
        out[17 + 2 * i] = hex[mac[i] & 15];
    }
    out[HD_LP_TOKEN_LEN] = 0;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

int hd_lp_token_verify(const uint8_t secret[32], const char *t, size_t len, uint64_t *id)
{
    if (len != HD_LP_TOKEN_LEN) return 0;
    uint64_t v = 0;
    uint8_t mac[16];
    for (int i = 0; i < 16; i++) {
        int d = hexval(t[i]);
        if (d < 0) return 0;
        v = v << 4 | (uint64_t)d;
    }
    for (int i = 0; i < 16; i++) {
        int hi = hexval(t[16 + 2 * i]), lo = hexval(t[17 + 2 * i]);
        if (hi < 0 || lo < 0) return 0;
        mac[i] = (uint8_t)(hi << 4 | lo);
    }
    uint8_t want[32];
    sign(secret, v, want);
    if (!hd_ct_equal(mac, 16, want, 16)) return 0;
    *id = v;
    return 1;
}

/* ---- deadlines ----------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

/* The timer at the head's deadline (stopped when the list is empty). */
static void arm(hd_lp_ctx *lp)
{
    if (!lp->head) {
        uv_timer_stop(&lp->timer);
        return;
    }
    uint64_t now = uv_now(lp->net->loop), at = lp->head->deadline;
    uv_timer_start(&lp->timer, on_timer, at > now ? at - now : 0, 0);
}

static void unlist(hd_lp_ctx *lp, lp_session *s)
{
    if (!s->listed) return;
    int head = lp->head == s;
    if (s->prev) s->prev->next = s->next;
    else lp->head = s->next;
    if (s->next) s->next->prev = s->prev;
    else lp->tail = s->prev;
    s->prev = s->next = NULL;
    s->listed = 0;
    if (head) arm(lp);
}

/* Puts s on the list at deadline: found from the tail, where it nearly
 * always belongs (every poll is held as long, every window as long). */
static void list_at(hd_lp_ctx *lp, lp_session *s, uint64_t deadline)
{
    unlist(lp, s);
    s->deadline = deadline;
    lp_session *after = lp->tail;
    while (after && after->deadline > deadline) after = after->prev;
    s->prev = after;
    s->next = after ? after->next : lp->head;
    if (s->next) s->next->prev = s;
    else lp->tail = s;
    if (after) after->next = s;
    else lp->head = s;
    s->listed = 1;
    if (lp->head == s) arm(lp);
}

/* ---- answers ----------------------------------------------------------------------------- */

void hd_lp_error(hd_conn *c, const hd_http_req *r, int http_status, int status, const char *msg,
                 int close)
{
    hd_str b = HD_STR_INIT;
    hd_str_printf(&b, "{\"status\":%d,\"error\":", status);
    hd_str_add_json(&b, msg, strlen(msg));
    hd_str_addc(&b, '}');
    hd_http_respond(c, r, http_status, "application/json", b.p ? b.p : "", b.len, CORS, close);
    hd_str_free(&b);
}

static void respond(hd_conn *c, const hd_http_req *r, const hd_str *body, int close)
{
    if (body->oom) {
        hd_error("conn %llu: out of memory answering a long poll", (unsigned long long)c->id);
        hd_lp_error(c, r, 503, 500, "out of memory", 1);
        return;
    }
    hd_http_respond(c, r, 200, "application/json", body->p, body->len, CORS, close);
}

/* {"status":410}: no such session (the client opens a new one). */
static void gone(hd_conn *c, const hd_http_req *r, const char *why)
{
    if (why) {
        hd_lp_error(c, r, 200, 410, why, 0);
        return;
    }
    static const char body[] = "{\"status\":410}";
    hd_http_respond(c, r, 200, "application/json", body, sizeof body - 1, CORS, 0);
}

/* Answers a poll of s on c with what s has queued: 200 with the messages,
 * 204 when there is none, 410 when s is gone or closing with nothing left
 * (a closing session then ends). */
static void answer_poll(hd_lp_ctx *lp, lp_session *s, hd_conn *c, const hd_http_req *r)
{
    hd_conn *sc = s->c;
    int closing = !hd_conn_open(sc);
    if (s->ended || (closing && !sc->wq_head)) {
        gone(c, r, NULL);
        if (!s->ended) hd_conn_close(sc);
        return;
    }
    char tok[HD_LP_TOKEN_LEN + 1];
    hd_lp_token(lp->secret, sc->id, tok);
    hd_str b = HD_STR_INIT;
    hd_str_printf(&b, "{\"status\":%d,\"token\":\"%s\",\"messages\":[", sc->wq_head ? 200 : 204,
                  tok);
    size_t taken = 0;
    int first = 1;
    for (hd_wq_item *it = sc->wq_head; it; it = it->next) {
        int op;
        size_t len;
        const uint8_t *p = hd_ws_frame_payload(it->buf, &op, &len);
        taken += it->buf->len - it->off;
        if (op != HD_WS_TEXT) { /* (a binary reply or push: not for a text transport) */
            lp->st->dropped_binary_lp++;
            continue;
        }
        if (!first) hd_str_addc(&b, ',');
        first = 0;
        /* V2 clients take each message as text; V1 ones (phoenix.js 1.2)
         * as the JSON value itself. */
        if (sc->flags & HD_CF_V1) hd_str_add(&b, p, len);
        else hd_str_add_json(&b, (const char *)p, len);
    }
    hd_str_adds(&b, "]}");
    if (!b.oom) hd_conn_written(sc, taken);
    respond(c, r, &b, closing ? 0 : HD_HTTP_KEEP);
    hd_str_free(&b);
    if (closing) hd_conn_close(sc);
}

static void held_answer(void *ud, hd_conn *c, hd_http_req *r)
{
    lp_session *s = ud;
    answer_poll(ctx_of(s->c), s, c, r);
}

/* {"status":status,"token":<sc's>,"messages":[]} on c, kept alive. */
static void answer_empty(hd_lp_ctx *lp, const hd_conn *sc, hd_conn *c, const hd_http_req *r,
                         int status)
{
    char tok[HD_LP_TOKEN_LEN + 1], body[96];
    hd_lp_token(lp->secret, sc->id, tok);
    int n = snprintf(body, sizeof body, "{\"status\":%d,\"token\":\"%s\",\"messages\":[]}", status,
                     tok);
    hd_http_respond(c, r, 200, "application/json", body, (size_t)n, CORS, HD_HTTP_KEEP);
}

/* An older poll a new one of the session replaces: 204, and what is
 * queued stays for the new one (its client gave up on the old). */
static void superseded_answer(void *ud, hd_conn *c, hd_http_req *r)
{
    lp_session *s = ud;
    answer_empty(ctx_of(s->c), s->c, c, r, 204);
}

/* Answers the poll s holds with fn, if its connection is still there. */
static void answer_held_with(hd_lp_ctx *lp, lp_session *s, hd_http_request_cont *fn)
{
    uint64_t id = s->poll_id;
    s->poll_id = 0;
    hd_conn *pc = hd_net_find(lp->net, id);
    if (pc && hd_http_deferred(pc)) hd_http_continue(pc, fn, s);
}

/* Answers the poll s holds (with what is queued), if its connection is
 * still there. */
static void answer_held(hd_lp_ctx *lp, lp_session *s) { answer_held_with(lp, s, held_answer); }

/* s has no poll held now: its window runs from now (unless it ended or
 * closes, or a poll came again meanwhile). */
static void idle(hd_lp_ctx *lp, lp_session *s)
{
    if (!s->ended && !s->poll_id && hd_conn_open(s->c))
        list_at(lp, s, uv_now(lp->net->loop) + lp->cfg->lp_window_ms);
}

static void on_timer(uv_timer_t *t)
{
    hd_lp_ctx *lp = t->data;
    uint64_t now = uv_now(lp->net->loop);
    for (int n = 0; n < 4096 && lp->head && lp->head->deadline <= now; n++) {
        lp_session *s = lp->head;
        unlist(lp, s);
        if (s->poll_id) {
            answer_held(lp, s); /* 204 (or what came meanwhile) */
            idle(lp, s);
        } else {
            lp->st->lp_expired++;
            s->expired = 1;
            hd_debug("conn %llu: long-poll session abandoned (no poll for %llu ms)",
                     (unsigned long long)s->c->id, (unsigned long long)lp->cfg->lp_window_ms);
            hd_conn_close(s->c);
        }
    }
    arm(lp);
}

/* ---- the session's protocol ---------------------------------------------------------- */

/* (A session has no socket to read: its messages come in POSTs.) */
static void lp_read(hd_conn *c, uint8_t *data, size_t len)
{
    (void)c, (void)data, (void)len;
}

/* The writer's turn: a held poll takes what is queued. */
static void lp_write(hd_conn *c)
{
    lp_session *s = c->proto;
    if (!s->poll_id || !c->wq_head) return;
    hd_lp_ctx *lp = ctx_of(c);
    answer_held(lp, s);
    idle(lp, s);
}

/* Closes the session at the protocol level: the channels are left now,
 * a held poll is answered with what is left (then the session ends), or
 * what is queued waits for the next poll (ws_close_ms at most). */
static void lp_close(hd_conn *c, uint16_t code, const char *reason)
{
    (void)code;
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return;
    hd_lp_ctx *lp = ctx_of(c);
    lp_session *s = c->proto;
    if (!reason || !*reason) reason = "closed";
    if (lp->feeding == s) snprintf(lp->why, sizeof lp->why, "%s", reason);
    lp->h->on_close(lp->ud, c, reason);
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return; /* (a hook closed it) */
    c->flags |= HD_CF_WS_CLOSE_SENT;
    unlist(lp, s);
    if (s->poll_id) {
        answer_held(lp, s); /* (ends the session) */
        if (!(c->flags & HD_CF_CLOSED)) hd_conn_close(c);
    } else if (!c->wq_head) {
        hd_conn_close(c);
    } else {
        c->deadline = uv_now(c->net->loop) + lp->cfg->ws_close_ms; /* (the sweeper's) */
    }
}

static void post_answer(void *ud, hd_conn *c, hd_http_req *r);

/* The session is closing (hd_conn_close): its channels are left, a held
 * poll and a waiting POST are answered 410. */
static void lp_on_closed(hd_conn *c)
{
    hd_lp_ctx *lp = ctx_of(c);
    lp_session *s = c->proto;
    unlist(lp, s);
    s->ended = 1;
    lp->h->on_close(lp->ud, c, s->expired ? "timeout" : "closed");
    if (s->poll_id) answer_held(lp, s);
    if (s->post_id) {
        hd_conn *pc = hd_net_find(lp->net, s->post_id);
        s->post_id = 0;
        if (pc && hd_http_deferred(pc)) hd_http_continue(pc, post_answer, s);
    }
}

static void lp_free(hd_conn *c)
{
    lp_session *s = c->proto;
    if (s->batch) free(s->batch->bytes);
    free(s->batch);
    free(s);
}

/* ---- messages in ------------------------------------------------------------------------ */

/* Hands the batch's messages on, in order, until the session closes or
 * its reading pauses. Returns 1 when every message was handed on. */
static int feed(hd_lp_ctx *lp, lp_session *s, char *bytes, const lp_item *items, size_t n,
                size_t *next)
{
    hd_conn *sc = s->c;
    lp->feeding = s;
    lp->why[0] = 0;
    while (*next < n && hd_conn_open(sc) && !(sc->flags & HD_CF_PAUSED)) {
        const lp_item *it = &items[(*next)++];
        int rate = hd_ws_rate_check(&s->rate, lp->cfg, lp->st, sc);
        if (rate == HD_WS_RATE_CLOSE) {
            lp_close(sc, 1008, "message rate exceeded");
            break;
        }
        if (lp->h->on_message(lp->ud, sc, it->opcode, (uint8_t *)bytes + it->off, it->len,
                              rate == HD_WS_RATE_REFUSED))
            break;
    }
    lp->feeding = NULL;
    return *next >= n;
}

/* The answer to a POST whose messages were all handed on (or whose
 * session closed meanwhile: why it did, if known). */
static void post_done(lp_session *s, hd_conn *c, const hd_http_req *r, const char *why)
{
    if (s->ended || !hd_conn_open(s->c)) {
        gone(c, r, why && *why ? why : "session closed");
        return;
    }
    static const char ok[] = "{\"status\":200}";
    hd_http_respond(c, r, 200, "application/json", ok, sizeof ok - 1, CORS, HD_HTTP_KEEP);
}

static void post_answer(void *ud, hd_conn *c, hd_http_req *r)
{
    lp_session *s = ud;
    post_done(s, c, r, NULL);
}

/* Reading goes on (the session's hook was answered): the rest of the
 * waiting POST's messages, then its answer. */
static void lp_resume(hd_conn *c)
{
    hd_lp_ctx *lp = ctx_of(c);
    lp_session *s = c->proto;
    lp_batch *b = s->batch;
    if (!b) return;
    if (!feed(lp, s, b->bytes, b->items, b->n, &b->next) && hd_conn_open(c)) return; /* (paused again) */
    s->batch = NULL;
    free(b->bytes);
    free(b);
    hd_conn *pc = s->post_id ? hd_net_find(lp->net, s->post_id) : NULL;
    s->post_id = 0;
    if (pc && hd_http_deferred(pc)) hd_http_continue(pc, post_answer, s);
}

/* The messages of a POST body: application/x-ndjson is one per line (a
 * text message begins with '[' or '{'; any other line is the base64 of
 * a binary message, decoded in place), anything else one text message.
 * Returns the items (malloc'd) in *out and their count, or NULL with
 * *status and *why. */
static lp_item *split(hd_lp_ctx *lp, char *body, size_t len, int ndjson, size_t *count,
                      int *status, const char **why)
{
    size_t n = 0, max = lp->cfg->lp_max_batch;
    if (ndjson) {
        for (size_t i = 0; i < len; i++) n += body[i] == '\n';
        n++;
    } else {
        n = 1;
    }
    if (n > max + (ndjson && len && body[len - 1] == '\n')) {
        *status = 413;
        *why = "too many messages in one batch (longpoll.max_batch)";
        return NULL;
    }
    lp_item *items = malloc(n * sizeof *items);
    if (!items) {
        *status = 503;
        *why = "out of memory";
        return NULL;
    }
    size_t k = 0, at = 0;
    while (at <= len && k < n) {
        const char *nl = ndjson ? memchr(body + at, '\n', len - at) : NULL;
        size_t end = nl ? (size_t)(nl - body) : len, l = end - at;
        if (l && body[at + l - 1] == '\r') l--;
        if (l) {
            lp_item *it = &items[k];
            it->off = at;
            it->len = l;
            it->opcode = HD_WS_TEXT;
            if (ndjson && body[at] != '[' && body[at] != '{') {
                long dl = hd_base64_decode(body + at, l, (uint8_t *)body + at);
                if (dl < 0) {
                    free(items);
                    *status = 400;
                    *why = "a line that is neither a JSON message nor base64";
                    return NULL;
                }
                it->len = (size_t)dl;
                it->opcode = HD_WS_BINARY;
            }
            if (it->len > lp->cfg->max_message_bytes) {
                free(items);
                *status = 413;
                *why = "a message over limits.max_message_bytes";
                return NULL;
            }
            k++;
        }
        at = end + 1;
    }
    *count = k;
    return items;
}

static void post(hd_lp_ctx *lp, lp_session *s, hd_conn *c, hd_http_req *r)
{
    lp->st->lp_posts++;
    hd_conn *sc = s->c;
    if (!hd_conn_open(sc)) {
        gone(c, r, "session closed");
        return;
    }
    if (s->batch) {
        hd_lp_error(c, r, 429, 429, "the session's previous batch is still being handled",
                    HD_HTTP_KEEP);
        return;
    }
    size_t ctl = 0;
    const char *ct = hd_http_header(r, "content-type", &ctl);
    int ndjson = ct && ctl >= 20 && hd_strieq(ct, 20, "application/x-ndjson");
    size_t n = 0;
    int status = 0;
    const char *why = NULL;
    lp_item *items = r->body.len ? split(lp, r->body.p, r->body.len, ndjson, &n, &status, &why)
                                 : NULL;
    if (!r->body.len) {
        post_done(s, c, r, NULL); /* (nothing to hand on) */
        return;
    }
    if (!items) {
        hd_lp_error(c, r, status, status, why, HD_HTTP_KEEP);
        return;
    }
    size_t next = 0;
    if (feed(lp, s, r->body.p, items, n, &next) || !hd_conn_open(sc)) {
        free(items);
        post_done(s, c, r, lp->why);
        return;
    }
    /* Paused: the rest waits for the session's hook, and so does the answer. */
    lp_batch *b = malloc(sizeof *b + (n - next) * sizeof *items);
    char *bytes = b ? malloc(r->body.len) : NULL;
    if (!bytes) {
        free(b);
        free(items);
        hd_error("conn %llu: out of memory keeping a batch", (unsigned long long)sc->id);
        lp_close(sc, 1011, "out of memory");
        post_done(s, c, r, "out of memory");
        return;
    }
    memcpy(bytes, r->body.p, r->body.len);
    memcpy(b->items, items + next, (n - next) * sizeof *items);
    free(items);
    b->n = n - next;
    b->next = 0;
    b->bytes = bytes;
    s->batch = b;
    s->post_id = c->id;
    hd_http_defer(c);
}

/* ---- polls --------------------------------------------------------------------------------- */

/* The client dropped the poll s holds (its connection closed): the
 * window runs from now. */
static void poll_gone(void *ud, hd_conn *c)
{
    lp_session *s = ud;
    if (s->poll_id != c->id) return;
    s->poll_id = 0;
    idle(ctx_of(s->c), s);
}

static void poll(hd_lp_ctx *lp, lp_session *s, hd_conn *c, hd_http_req *r)
{
    lp->st->lp_polls++;
    if (s->poll_id) answer_held_with(lp, s, superseded_answer);
    if (s->c->wq_head || !hd_conn_open(s->c)) {
        answer_poll(lp, s, c, r);
        idle(lp, s);
        return;
    }
    hd_http_defer_watch(c, poll_gone, s);
    s->poll_id = c->id;
    list_at(lp, s, uv_now(lp->net->loop) + lp->cfg->lp_poll_ms);
}

/* The request's token: the query's token, or X-Phoenix-Longpoll-Token.
 * phoenix.js sends "token=null" before it has one. */
static size_t token_of(const hd_http_req *r, char *out, size_t cap)
{
    size_t len = 0;
    const char *h = hd_http_header(r, "x-phoenix-longpoll-token", &len);
    if (h && len < cap) {
        memcpy(out, h, len);
        out[len] = 0;
    } else if (!hd_http_query_param(r, "token", out, cap)) {
        out[0] = 0;
    }
    if (strcmp(out, "null") == 0 || strcmp(out, "undefined") == 0) out[0] = 0;
    return strlen(out);
}

int hd_lp_request(hd_lp_ctx *lp, hd_conn *c, hd_http_req *r)
{
    if (r->method == HTTP_OPTIONS) {
        hd_http_respond(c, r, 200, "text/plain", "", 0, PREFLIGHT, 0);
        return 1;
    }
    if (r->method != HTTP_GET && r->method != HTTP_POST) {
        hd_lp_error(c, r, 405, 405, "method not allowed (GET, POST, OPTIONS)",
                    0);
        return 1;
    }
    char tok[HD_LP_TOKEN_LEN + 2];
    size_t tl = token_of(r, tok, sizeof tok);
    if (!tl && r->method == HTTP_GET) return 0;
    uint64_t id = 0;
    if (!hd_lp_token_verify(lp->secret, tok, tl, &id)) {
        lp->st->lp_forged++;
        hd_debug("conn %llu: a long-poll token that does not verify", (unsigned long long)c->id);
        gone(c, r, NULL);
        return 1;
    }
    hd_conn *sc = hd_net_find(lp->net, id);
    if (!sc || sc->kind != HD_CONN_LP) {
        lp->st->lp_gone++;
        gone(c, r, NULL);
        return 1;
    }
    /* (this connection carries a session's polls: the drain leaves it
     * to the session's end) */
    c->flags |= HD_CF_POLL;
    if (r->method == HTTP_GET) poll(lp, sc->proto, c, r);
    else post(lp, sc->proto, c, r);
    return 1;
}

hd_conn *hd_lp_open(hd_lp_ctx *lp, hd_conn *c, hd_http_req *r, int v1)
{
    lp_session *s = calloc(1, sizeof *s);
    hd_conn *sc = s ? hd_net_add_session(lp->net, &lp->ops, s, c) : NULL;
    if (!sc) {
        free(s);
        hd_error("conn %llu: out of memory opening a long-poll session", (unsigned long long)c->id);
        hd_lp_error(c, r, 503, 500, "out of memory", 1);
        return NULL;
    }
    s->c = sc;
    sc->flags |= HD_CF_TEXT | (v1 ? HD_CF_V1 : 0);
    hd_ws_rate_init(&s->rate, lp->cfg, uv_now(lp->net->loop));
    idle(lp, s);
    lp->st->lp_opened++;
    c->flags |= HD_CF_POLL;
    answer_empty(lp, sc, c, r, 410); /* (phoenix.js reads 410 with a token as "open") */
    hd_debug("conn %llu: long-poll session %llu opened", (unsigned long long)c->id,
             (unsigned long long)sc->id);
    return sc;
}

void hd_lp_init(hd_lp_ctx *lp, uv_loop_t *loop, const hd_config *cfg, hd_stats *st,
                hd_net *net, const hd_ws_handler *h, void *ud)
{
    memset(lp, 0, sizeof *lp);
    lp->ops = (hd_conn_ops){lp_read, lp_close, lp_on_closed, lp_free, lp_write, lp_resume};
    lp->cfg = cfg;
    lp->st = st;
    lp->net = net;
    lp->h = h;
    lp->ud = ud;
    if (uv_random(NULL, NULL, lp->secret, sizeof lp->secret, 0, NULL) != 0) {
        /* (no entropy source: a secret from the clock and the address
         * space is still unknown to clients, if weaker) */
        uint64_t seed[4] = {uv_hrtime(), (uint64_t)(uintptr_t)lp, (uint64_t)(uintptr_t)&seed,
                            uv_now(loop)};
        hd_sha256(seed, sizeof seed, lp->secret);
        hd_warn("longpoll: no random source: tokens are signed with a weaker secret");
    }
    uv_timer_init(loop, &lp->timer);
    lp->timer.data = lp;
}

void hd_lp_close(hd_lp_ctx *lp, uv_close_cb cb, void *data)
{
    if (uv_is_closing((uv_handle_t *)&lp->timer)) return;
    lp->timer.data = data;
    uv_close((uv_handle_t *)&lp->timer, cb);
}
