#include "longpoll.h"
#include "cluster.h"
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

/* A place on the context's deadline list: a session's (its held poll's
 * end, or its window's), or a forwarded request's (how long this node
 * waits for the session's node to answer it). */
typedef struct lp_due {
    struct lp_due *prev, *next;
    uint64_t deadline;
    uint8_t listed, fwd;         /* on the list; an lp_fwd (else an lp_session) */
} lp_due;

/* A request to answer later: an HTTP connection of this node's (node
 * NULL: id is its connection id), or one that another node forwarded
 * here (node: that node, id its connection there, seq which of that
 * connection's requests). id 0: none. */
typedef struct lp_to {
    uint64_t id, seq;
    char *node;
} lp_to;

/* A session's state (c->proto). */
typedef struct lp_session {
    lp_due due;                  /* first */
    hd_conn *c;                  /* the session */
    lp_to poll;                  /* the poll it holds */
    lp_to post;                  /* the POST whose messages wait (batch) */
    lp_batch *batch;             /* that POST's messages not yet handed on */
    hd_ws_rate rate;             /* limits.client_messages_per_s */
    uint8_t expired, ended;
} lp_session;

/* A request of this node's that went to the node of its session
 * (hd_cluster_to_node): its connection waits for the answer. */
typedef struct lp_fwd {
    lp_due due;                  /* first */
    hd_lp_ctx *lp;
    uint64_t conn_id, seq;
    int poll;                    /* a GET (else a POST) */
    char token[HD_LP_TOKEN_MAX + 1];
} lp_fwd;

/* How much longer than the session's node would take a forwarded request
 * waits for its answer (the round trips through Redis), as Phoenix's
 * pubsub_timeout_ms. */
#define LP_FWD_MARGIN_MS 2000

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

/* The token of session id that this node hands out: in a cluster, the
 * node's id follows the 48 digits, so that any node can tell where the
 * session lives. */
static void token_for(const hd_lp_ctx *lp, uint64_t id, char out[HD_LP_TOKEN_MAX + 1])
{
    hd_lp_token(lp->secret, id, out);
    if (lp->cluster) snprintf(out + HD_LP_TOKEN_LEN, HD_LP_TOKEN_MAX + 1 - HD_LP_TOKEN_LEN, "%s", lp->node);
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

static void unlist(hd_lp_ctx *lp, lp_due *d)
{
    if (!d->listed) return;
    int head = lp->head == d;
    if (d->prev) d->prev->next = d->next;
    else lp->head = d->next;
    if (d->next) d->next->prev = d->prev;
    else lp->tail = d->prev;
    d->prev = d->next = NULL;
    d->listed = 0;
    if (head) arm(lp);
}

/* Puts d on the list at deadline: found from the tail, where it nearly
 * always belongs (every poll is held as long, every window as long). */
static void list_at(hd_lp_ctx *lp, lp_due *d, uint64_t deadline)
{
    unlist(lp, d);
    d->deadline = deadline;
    lp_due *after = lp->tail;
    while (after && after->deadline > deadline) after = after->prev;
    d->prev = after;
    d->next = after ? after->next : lp->head;
    if (d->next) d->next->prev = d;
    else lp->tail = d;
    if (after) after->next = d;
    else lp->head = d;
    d->listed = 1;
    if (lp->head == d) arm(lp);
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

/* An answer to a long-poll request, built before it is sent (here or to
 * the node that forwarded the request). */
typedef struct lp_ans {
    int http;                    /* its HTTP status */
    int keep;                    /* HD_HTTP_KEEP: its connection stays open, even while draining */
    hd_str body;                 /* JSON */
    size_t taken;                /* the session's queued bytes it carries */
    int ends;                    /* the session ends once it is sent */
} lp_ans;

#define LP_ANS_INIT {200, HD_HTTP_KEEP, HD_STR_INIT, 0, 0}

/* {"status":status,"error":msg} (msg NULL: {"status":status}) into a. */
static void ans_status(lp_ans *a, int http, int status, const char *msg, int keep)
{
    a->http = http;
    a->keep = keep;
    hd_str_printf(&a->body, "{\"status\":%d", status);
    if (msg) {
        hd_str_adds(&a->body, ",\"error\":");
        hd_str_add_json(&a->body, msg, strlen(msg));
    }
    hd_str_addc(&a->body, '}');
}

/* Sends a on c (r's answer). */
static void respond(hd_conn *c, const hd_http_req *r, const lp_ans *a)
{
    if (a->body.oom) {
        hd_error("conn %llu: out of memory answering a long poll", (unsigned long long)c->id);
        hd_lp_error(c, r, 503, 500, "out of memory", 1);
        return;
    }
    hd_http_respond(c, r, a->http, "application/json", a->body.p, a->body.len, CORS, a->keep);
}

static void respond_cont(void *ud, hd_conn *c, hd_http_req *r) { respond(c, r, ud); }

/* "lr1 <id> <seq> <http> <keep>\n<body>": the answer to a request another
 * node forwarded here, sent to it. Returns 1 when sent. */
static int send_back(hd_lp_ctx *lp, const lp_to *t, const lp_ans *a)
{
    hd_str m = HD_STR_INIT;
    lp_ans oom = LP_ANS_INIT;
    if (a->body.oom) ans_status(&oom, 503, 500, "out of memory", 0);
    const lp_ans *x = a->body.oom ? &oom : a;
    hd_str_printf(&m, "lr1 %llu %llu %d %d\n", (unsigned long long)t->id,
                  (unsigned long long)t->seq, x->http, x->keep ? 1 : 0);
    hd_str_add(&m, x->body.p, x->body.len);
    int sent = !m.oom && hd_cluster_to_node(lp->cluster, t->node, m.p, m.len) == 0;
    hd_str_free(&m);
    hd_str_free(&oom.body);
    return sent;
}

/* Whether the request t stands for can still be answered. */
static int reachable(hd_lp_ctx *lp, const lp_to *t)
{
    if (t->node) return hd_cluster_reaches(lp->cluster, t->node);
    hd_conn *pc = hd_net_find(lp->net, t->id);
    return pc && hd_http_deferred(pc);
}

/* Sends a to the request t stands for (reachable just now). Returns 1
 * when it went. */
static int send_to(hd_lp_ctx *lp, const lp_to *t, lp_ans *a)
{
    if (t->node) return send_back(lp, t, a);
    hd_conn *pc = hd_net_find(lp->net, t->id);
    if (!pc || !hd_http_deferred(pc)) return 0;
    hd_http_continue(pc, respond_cont, a);
    return 1;
}

/* The answer to a poll of s: 200 with the messages it has queued, 204
 * when there is none, 410 when s is gone or closing with nothing left
 * (a closing session then ends). */
static void poll_answer(hd_lp_ctx *lp, lp_session *s, lp_ans *a)
{
    hd_conn *sc = s->c;
    int closing = !hd_conn_open(sc);
    if (s->ended || (closing && !sc->wq_head)) {
        ans_status(a, 200, 410, NULL, 0);
        a->ends = !s->ended;
        return;
    }
    char tok[HD_LP_TOKEN_MAX + 1];
    token_for(lp, sc->id, tok);
    hd_str *b = &a->body;
    hd_str_printf(b, "{\"status\":%d,\"token\":\"%s\",\"messages\":[", sc->wq_head ? 200 : 204,
                  tok);
    int first = 1;
    for (hd_wq_item *it = sc->wq_head; it; it = it->next) {
        int op;
        size_t len;
        const uint8_t *p = hd_ws_frame_payload(it->buf, &op, &len);
        a->taken += it->buf->len - it->off;
        if (op != HD_WS_TEXT) { /* (a binary reply or push: not for a text transport) */
            lp->st->dropped_binary_lp++;
            continue;
        }
        if (!first) hd_str_addc(b, ',');
        first = 0;
        /* V2 clients take each message as text; V1 ones (phoenix.js 1.2)
         * as the JSON value itself. */
        if (sc->flags & HD_CF_V1) hd_str_add(b, p, len);
        else hd_str_add_json(b, (const char *)p, len);
    }
    hd_str_adds(b, "]}");
    a->keep = closing ? 0 : HD_HTTP_KEEP;
    a->ends = closing;
}

/* A poll's answer went: what it carried is written, a closing session
 * ends. */
static void poll_answered(lp_session *s, const lp_ans *a)
{
    if (a->taken && !a->body.oom) hd_conn_written(s->c, a->taken);
    if (a->ends) hd_conn_close(s->c);
}

/* {"status":status,"token":<sc's>,"messages":[]}. */
static void empty_answer(hd_lp_ctx *lp, const hd_conn *sc, int status, lp_ans *a)
{
    char tok[HD_LP_TOKEN_MAX + 1];
    token_for(lp, sc->id, tok);
    hd_str_printf(&a->body, "{\"status\":%d,\"token\":\"%s\",\"messages\":[]}", status, tok);
}

/* Answers the poll s holds, if it can still be answered: with what is
 * queued, or (superseded: a newer poll replaces it, its client gave up on
 * it) 204, what is queued staying for the new one. */
static void answer_held(hd_lp_ctx *lp, lp_session *s, int superseded)
{
    lp_to t = s->poll;
    s->poll = (lp_to){0, 0, NULL};
    if (t.id && reachable(lp, &t)) {
        lp_ans a = LP_ANS_INIT;
        if (superseded) empty_answer(lp, s->c, 204, &a);
        else poll_answer(lp, s, &a);
        if (send_to(lp, &t, &a) && !superseded) poll_answered(s, &a);
        hd_str_free(&a.body);
    }
    free(t.node);
}

/* s has no poll held now: its window runs from now (unless it ended or
 * closes, or a poll came again meanwhile). */
static void idle(hd_lp_ctx *lp, lp_session *s)
{
    if (!s->ended && !s->poll.id && hd_conn_open(s->c))
        list_at(lp, &s->due, uv_now(lp->net->loop) + lp->cfg->lp_window_ms);
}

static void forward_expired(hd_lp_ctx *lp, lp_fwd *f);

static void on_timer(uv_timer_t *t)
{
    hd_lp_ctx *lp = t->data;
    uint64_t now = uv_now(lp->net->loop);
    for (int n = 0; n < 4096 && lp->head && lp->head->deadline <= now; n++) {
        lp_due *d = lp->head;
        unlist(lp, d);
        if (d->fwd) {
            forward_expired(lp, (lp_fwd *)d);
            continue;
        }
        lp_session *s = (lp_session *)d;
        if (s->poll.id) {
            answer_held(lp, s, 0); /* 204 (or what came meanwhile) */
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
    if (!s->poll.id || !c->wq_head) return;
    hd_lp_ctx *lp = ctx_of(c);
    answer_held(lp, s, 0);
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
    unlist(lp, &s->due);
    if (s->poll.id) {
        answer_held(lp, s, 0); /* (ends the session) */
        if (!(c->flags & HD_CF_CLOSED)) hd_conn_close(c);
    } else if (!c->wq_head) {
        hd_conn_close(c);
    } else {
        c->deadline = uv_now(c->net->loop) + lp->cfg->ws_close_ms; /* (the sweeper's) */
    }
}

static void post_answer(lp_session *s, const char *why, lp_ans *a);

/* Answers the POST s->post stands for (its messages all handed on, or
 * its session closed). */
static void answer_post(hd_lp_ctx *lp, lp_session *s, const char *why)
{
    lp_to t = s->post;
    s->post = (lp_to){0, 0, NULL};
    if (t.id && reachable(lp, &t)) {
        lp_ans a = LP_ANS_INIT;
        post_answer(s, why, &a);
        send_to(lp, &t, &a);
        hd_str_free(&a.body);
    }
    free(t.node);
}

/* The session is closing (hd_conn_close): its channels are left, a held
 * poll and a waiting POST are answered 410. */
static void lp_on_closed(hd_conn *c)
{
    hd_lp_ctx *lp = ctx_of(c);
    lp_session *s = c->proto;
    unlist(lp, &s->due);
    s->ended = 1;
    lp->h->on_close(lp->ud, c, s->expired ? "timeout" : "closed");
    if (s->poll.id) answer_held(lp, s, 0);
    if (s->post.id) answer_post(lp, s, NULL);
}

static void lp_free(hd_conn *c)
{
    lp_session *s = c->proto;
    if (s->batch) free(s->batch->bytes);
    free(s->batch);
    free(s->poll.node);
    free(s->post.node);
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
static void post_answer(lp_session *s, const char *why, lp_ans *a)
{
    if (s->ended || !hd_conn_open(s->c))
        ans_status(a, 200, 410, why && *why ? why : "session closed", 0);
    else
        ans_status(a, 200, 200, NULL, HD_HTTP_KEEP);
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
    answer_post(lp, s, NULL);
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


/* {"status":410}: no such session (the client opens a new one). */
static void gone(hd_conn *c, const hd_http_req *r)
{
    static const char body[] = "{\"status\":410}";
    hd_http_respond(c, r, 200, "application/json", body, sizeof body - 1, CORS, 0);
}

/* A request of session s: from this node's connection c (r its request;
 * remote NULL) or forwarded by another node (c and r NULL). */
typedef struct lp_req {
    hd_conn *c;
    hd_http_req *r;
    const lp_to *remote;
} lp_req;

/* Answers q now. */
static void reply(hd_lp_ctx *lp, const lp_req *q, lp_ans *a)
{
    if (q->c) respond(q->c, q->r, a);
    else send_back(lp, q->remote, a);
}

static void reply_status(hd_lp_ctx *lp, const lp_req *q, int http, int status, const char *msg,
                         int keep)
{
    lp_ans a = LP_ANS_INIT;
    ans_status(&a, http, status, msg, keep);
    reply(lp, q, &a);
    hd_str_free(&a.body);
}

/* q's answer waits: the session keeps where it goes in *to. */
static void hold(const lp_req *q, lp_to *to)
{
    if (q->c) {
        *to = (lp_to){q->c->id, 0, NULL};
    } else {
        *to = *q->remote;
        to->node = strdup(q->remote->node);
        if (!to->node) to->id = 0; /* (out of memory: never answered; its node gives up) */
    }
}

/* A POST of messages (body[0..len), writable: base64 lines are decoded
 * in place). */
static void post(hd_lp_ctx *lp, lp_session *s, const lp_req *q, char *body, size_t len,
                 int ndjson)
{
    lp->st->lp_posts++;
    hd_conn *sc = s->c;
    if (!hd_conn_open(sc)) {
        reply_status(lp, q, 200, 410, "session closed", 0);
        return;
    }
    if (s->batch) {
        reply_status(lp, q, 429, 429, "the session's previous batch is still being handled",
                     HD_HTTP_KEEP);
        return;
    }
    size_t n = 0;
    int status = 0;
    const char *why = NULL;
    lp_item *items = len ? split(lp, body, len, ndjson, &n, &status, &why) : NULL;
    if (len && !items) {
        reply_status(lp, q, status, status, why, HD_HTTP_KEEP);
        return;
    }
    size_t next = 0;
    if (!len || feed(lp, s, body, items, n, &next) || !hd_conn_open(sc)) {
        free(items);
        lp_ans a = LP_ANS_INIT;
        post_answer(s, lp->why, &a);
        reply(lp, q, &a);
        hd_str_free(&a.body);
        return;
    }
    /* Paused: the rest waits for the session's hook, and so does the answer. */
    lp_batch *b = malloc(sizeof *b + (n - next) * sizeof *items);
    char *bytes = b ? malloc(len) : NULL;
    if (!bytes) {
        free(b);
        free(items);
        hd_error("conn %llu: out of memory keeping a batch", (unsigned long long)sc->id);
        lp_close(sc, 1011, "out of memory");
        reply_status(lp, q, 200, 410, "out of memory", 0);
        return;
    }
    memcpy(bytes, body, len);
    memcpy(b->items, items + next, (n - next) * sizeof *items);
    free(items);
    b->n = n - next;
    b->next = 0;
    b->bytes = bytes;
    s->batch = b;
    hold(q, &s->post);
    if (q->c) hd_http_defer(q->c);
}

/* ---- polls --------------------------------------------------------------------------------- */

/* The client dropped the poll s holds (its connection closed): the
 * window runs from now. */
static void poll_gone(void *ud, hd_conn *c)
{
    lp_session *s = ud;
    if (s->poll.node || s->poll.id != c->id) return;
    s->poll.id = 0;
    idle(ctx_of(s->c), s);
}

static void poll(hd_lp_ctx *lp, lp_session *s, const lp_req *q)
{
    lp->st->lp_polls++;
    if (s->poll.id) answer_held(lp, s, 1);
    if (s->c->wq_head || !hd_conn_open(s->c)) {
        lp_ans a = LP_ANS_INIT;
        poll_answer(lp, s, &a);
        if (q->c) respond(q->c, q->r, &a);
        if (q->c || send_back(lp, q->remote, &a)) poll_answered(s, &a);
        hd_str_free(&a.body);
        idle(lp, s);
        return;
    }
    hold(q, &s->poll);
    if (q->c) hd_http_defer_watch(q->c, poll_gone, s);
    list_at(lp, &s->due, uv_now(lp->net->loop) + lp->cfg->lp_poll_ms);
}

/* The session a token names here, or NULL (counted: forged or gone). */
static lp_session *session_of(hd_lp_ctx *lp, const char *tok, size_t tl)
{
    uint64_t id = 0;
    if (!hd_lp_token_verify(lp->secret, tok, tl, &id)) {
        lp->st->lp_forged++;
        hd_debug("a long-poll token that does not verify");
        return NULL;
    }
    hd_conn *sc = hd_net_find(lp->net, id);
    if (!sc || sc->kind != HD_CONN_LP) {
        lp->st->lp_gone++;
        return NULL;
    }
    return sc->proto;
}

/* Whether a POST's body is ndjson (one message a line). */
static int is_ndjson(const hd_http_req *r)
{
    size_t ctl = 0;
    const char *ct = hd_http_header(r, "content-type", &ctl);
    return ct && ctl >= 20 && hd_strieq(ct, 20, "application/x-ndjson");
}

/* ---- across nodes ----------------------------------------------------------------------------
 *
 * A session lives on the node that opened it; its token names that node.
 * A poll or a POST that reaches another node (a balancer without sticky
 * sessions) goes to the session's node on its own channel:
 *   "lq1 <from> <conn> <seq> <G|N|T>\n<token>\n<body>"
 * (G a poll, N a POST of ndjson, T a POST of one message), and its answer
 * comes back: "lr1 <conn> <seq> <http status> <keep>\n<body>", written to
 * the waiting connection as the session's node would have. A request
 * whose answer does not come in time (the node is gone, or Redis) is
 * answered {"status":410}: the client opens a session here. */

/* "lc1 <from> <conn> <seq>\n<token>": the session's node is told that a
 * poll forwarded to it is no longer there to be answered (its client
 * left, or this node answered it), so that what comes for the session
 * waits for the next poll. */
static void fwd_cancel(hd_lp_ctx *lp, const lp_fwd *f)
{
    if (!f->poll) return;
    hd_str m = HD_STR_INIT;
    hd_str_printf(&m, "lc1 %s %llu %llu\n%s", lp->node, (unsigned long long)f->conn_id,
                  (unsigned long long)f->seq, f->token);
    if (!m.oom) hd_cluster_to_node(lp->cluster, f->token + HD_LP_TOKEN_LEN, m.p, m.len);
    hd_str_free(&m);
}

/* A forwarded request's client left: its answer, when it comes, is
 * dropped. */
static void fwd_gone(void *ud, hd_conn *c)
{
    (void)c;
    lp_fwd *f = ud;
    fwd_cancel(f->lp, f);
    unlist(f->lp, &f->due);
    free(f);
}

/* Answers f's connection with a (the watch is over then), and frees f. */
static void fwd_answer(hd_lp_ctx *lp, lp_fwd *f, lp_ans *a)
{
    hd_conn *pc = hd_net_find(lp->net, f->conn_id);
    unlist(lp, &f->due);
    free(f);
    if (pc && hd_http_deferred(pc)) hd_http_continue(pc, respond_cont, a);
}

/* Nothing came back in time: {"status":410}, the client opens a session
 * here. */
static void forward_expired(hd_lp_ctx *lp, lp_fwd *f)
{
    lp->st->lp_fwd_timeouts++;
    hd_debug("conn %llu: no answer from the node of a long-poll session",
             (unsigned long long)f->conn_id);
    lp_ans a = LP_ANS_INIT;
    ans_status(&a, 200, 410, NULL, 0);
    fwd_answer(lp, f, &a);
    hd_str_free(&a.body);
}

/* Sends request r of c, whose token tok names node, to that node. */
static void forward(hd_lp_ctx *lp, hd_conn *c, hd_http_req *r, const char *tok, size_t tl,
                    const char *node)
{
    int get = r->method == HTTP_GET, ndjson = !get && is_ndjson(r);
    lp_fwd *f = calloc(1, sizeof *f);
    hd_str m = HD_STR_INIT;
    if (f) {
        f->lp = lp;
        f->due.fwd = 1;
        f->conn_id = c->id;
        f->seq = ++lp->fwd_seq;
        f->poll = get;
        memcpy(f->token, tok, tl);
        hd_str_printf(&m, "lq1 %s %llu %llu %c\n%.*s\n", lp->node, (unsigned long long)c->id,
                      (unsigned long long)f->seq, get ? 'G' : ndjson ? 'N' : 'T', (int)tl, tok);
        if (!get) hd_str_add(&m, r->body.p, r->body.len);
    }
    if (!f || m.oom || hd_cluster_to_node(lp->cluster, node, m.p, m.len) != 0) {
        free(f);
        hd_str_free(&m);
        lp->st->lp_gone++;
        gone(c, r);
        return;
    }
    hd_str_free(&m);
    lp->st->lp_fwd_out++;
    /* (its answer may wait a whole poll: the drain leaves the connection
     * to it, and a client that leaves is seen at once) */
    c->flags |= HD_CF_POLL;
    hd_http_defer_watch(c, fwd_gone, f);
    uint64_t wait = lp->cfg->lp_poll_ms;
    if (!get && lp->cfg->io_timeout_ms > wait) wait = lp->cfg->io_timeout_ms;
    list_at(lp, &f->due, uv_now(lp->net->loop) + wait + LP_FWD_MARGIN_MS);
}

/* The digits of p[0..n) up to the next space or newline, into *v; returns
 * what follows it, or NULL. */
static const char *num(const char *p, const char *e, uint64_t *v)
{
    uint64_t x = 0;
    const char *q = p;
    while (q < e && *q >= '0' && *q <= '9' && q - p < 20) x = x * 10 + (uint64_t)(*q++ - '0');
    if (q == p || q >= e || (*q != ' ' && *q != '\n')) return NULL;
    *v = x;
    return q + 1;
}

/* Whether p[0..n) can be a node's id: 1 to 255 visible ASCII bytes. */
static int node_name(const char *p, size_t n)
{
    if (!n || n > 255) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] <= ' ' || (unsigned char)p[i] >= 0x7f) return 0;
    return 1;
}

/* The session that tok[0..tl), another node sent, names on this node
 * (NULL: none, or it names another node). */
static lp_session *own_session(hd_lp_ctx *lp, const char *tok, size_t tl)
{
    size_t own = strlen(lp->node);
    if (tl != HD_LP_TOKEN_LEN + own || memcmp(tok + HD_LP_TOKEN_LEN, lp->node, own) != 0) return NULL;
    return session_of(lp, tok, HD_LP_TOKEN_LEN);
}

/* "lq1 ...": a request forwarded to a session of this node's. */
static void forwarded_request(hd_lp_ctx *lp, const char *p, const char *e)
{
    const char *sp = memchr(p, ' ', (size_t)(e - p));
    uint64_t id = 0, seq = 0;
    const char *q = sp ? num(sp + 1, e, &id) : NULL;
    q = q ? num(q, e, &seq) : NULL;
    const char *tok = q && e - q >= 2 && q[1] == '\n' ? q + 2 : NULL;
    const char *nl = tok ? memchr(tok, '\n', (size_t)(e - tok)) : NULL;
    size_t fl = sp ? (size_t)(sp - p) : 0;
    if (!nl || !node_name(p, fl) || !id || (*q != 'G' && *q != 'N' && *q != 'T')) {
        lp->st->lp_fwd_bad++;
        return;
    }
    char from[256];
    memcpy(from, p, fl);
    from[fl] = 0;
    lp_to to = {id, seq, from};
    lp_req rq = {NULL, NULL, &to};
    lp->st->lp_fwd_in++;
    lp_session *s = own_session(lp, tok, (size_t)(nl - tok));
    if (!s) {
        reply_status(lp, &rq, 200, 410, NULL, 0);
        return;
    }
    if (*q == 'G') {
        poll(lp, s, &rq);
        return;
    }
    size_t len = (size_t)(e - nl - 1);
    char *body = malloc(len ? len : 1);
    if (!body) {
        reply_status(lp, &rq, 503, 500, "out of memory", 0);
        return;
    }
    memcpy(body, nl + 1, len);
    post(lp, s, &rq, body, len, *q == 'N');
    free(body);
}

/* "lc1 ...": a poll forwarded here is no longer waited for. */
static void forwarded_cancel(hd_lp_ctx *lp, const char *p, const char *e)
{
    const char *sp = memchr(p, ' ', (size_t)(e - p));
    uint64_t id = 0, seq = 0;
    const char *q = sp ? num(sp + 1, e, &id) : NULL;
    q = q && q[-1] == ' ' ? num(q, e, &seq) : NULL;
    size_t fl = sp ? (size_t)(sp - p) : 0;
    if (!q || q[-1] != '\n' || !fl) {
        lp->st->lp_fwd_bad++;
        return;
    }
    lp_session *s = own_session(lp, q, (size_t)(e - q));
    if (!s || !s->poll.node || s->poll.id != id || s->poll.seq != seq ||
        strlen(s->poll.node) != fl || memcmp(s->poll.node, p, fl) != 0)
        return; /* (answered already, or another poll came) */
    free(s->poll.node);
    s->poll = (lp_to){0, 0, NULL};
    lp->st->lp_fwd_cancels++;
    idle(lp, s);
}

/* "lr1 ...": the answer to a request this node forwarded. */
static void forwarded_answer(hd_lp_ctx *lp, const char *p, const char *e)
{
    uint64_t id = 0, seq = 0, http = 0, keep = 0;
    const char *q = num(p, e, &id);
    q = q ? num(q, e, &seq) : NULL;
    q = q ? num(q, e, &http) : NULL;
    q = q && q[-1] == ' ' ? num(q, e, &keep) : NULL;
    if (!q || q[-1] != '\n' || http < 200 || http > 599) {
        lp->st->lp_fwd_bad++;
        return;
    }
    hd_conn *pc = hd_net_find(lp->net, id);
    lp_fwd *f = pc ? hd_http_watch_ud(pc, fwd_gone) : NULL;
    if (!f || f->seq != seq) return; /* (its client left, or it expired) */
    lp_ans a = {(int)http, keep ? HD_HTTP_KEEP : 0, HD_STR_INIT, 0, 0};
    hd_str_add(&a.body, q, (size_t)(e - q));
    fwd_answer(lp, f, &a);
    hd_str_free(&a.body);
}

void hd_lp_node_message(void *ud, const char *msg, size_t len)
{
    hd_lp_ctx *lp = ud;
    const char *e = msg + len;
    if (len > 4 && memcmp(msg, "lq1 ", 4) == 0) forwarded_request(lp, msg + 4, e);
    else if (len > 4 && memcmp(msg, "lr1 ", 4) == 0) forwarded_answer(lp, msg + 4, e);
    else if (len > 4 && memcmp(msg, "lc1 ", 4) == 0) forwarded_cancel(lp, msg + 4, e);
    else lp->st->lp_fwd_bad++;
}

size_t hd_lp_drain_forwards(hd_lp_ctx *lp)
{
    size_t n = 0;
    for (lp_due *d = lp->head, *next; d; d = next) {
        next = d->next;
        lp_fwd *f = (lp_fwd *)d;
        if (!d->fwd || !f->poll) continue;
        lp_ans a = LP_ANS_INIT;
        a.keep = 0; /* (the client's next poll goes to another node) */
        hd_str_printf(&a.body, "{\"status\":204,\"token\":\"%s\",\"messages\":[]}", f->token);
        fwd_cancel(lp, f);
        fwd_answer(lp, f, &a);
        hd_str_free(&a.body);
        n++;
    }
    return n;
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
        hd_lp_error(c, r, 405, 405, "method not allowed (GET, POST, OPTIONS)", 0);
        return 1;
    }
    char tok[HD_LP_TOKEN_MAX + 2];
    size_t tl = token_of(r, tok, sizeof tok);
    if (!tl && r->method == HTTP_GET) return 0;
    if (tl > HD_LP_TOKEN_MAX) { /* (no token of ours is that long) */
        lp->st->lp_forged++;
        gone(c, r);
        return 1;
    }
    /* (in a cluster the node's id follows the 48 digits) */
    const char *node = lp->cluster && tl > HD_LP_TOKEN_LEN ? tok + HD_LP_TOKEN_LEN : NULL;
    if (node && strcmp(node, lp->node) != 0) {
        forward(lp, c, r, tok, tl, node);
        return 1;
    }
    lp_session *s = session_of(lp, tok, node ? HD_LP_TOKEN_LEN : tl);
    if (!s) {
        gone(c, r);
        return 1;
    }
    /* (this connection carries a session's polls: the drain leaves it
     * to the session's end) */
    c->flags |= HD_CF_POLL;
    lp_req q = {c, r, NULL};
    if (r->method == HTTP_GET) {
        poll(lp, s, &q);
        return 1;
    }
    post(lp, s, &q, r->body.p, r->body.len, is_ndjson(r));
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
    lp_ans a = LP_ANS_INIT;
    empty_answer(lp, sc, 410, &a); /* (phoenix.js reads 410 with a token as "open") */
    respond(c, r, &a);
    hd_str_free(&a.body);
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
