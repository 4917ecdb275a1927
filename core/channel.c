#include "channel.h"
#include "cluster.h"
#include "err.h"
#include "hooks.h"
#include "log.h"
#include "phx.h"
#include "util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_PREFIX "base64url.bearer.phx."

/* ---- outbound frames ------------------------------------------------------ */

static void send_frame(hd_conn *c, hd_buf *f)
{
    if (!f) {
        hd_error("conn %llu: out of memory building a frame", (unsigned long long)c->id);
        return;
    }
    hd_topics_send(c, f);
    hd_buf_unref(f);
}

static void reply(hd_conn *c, const char *jr, const char *ref, const char *topic,
                  const char *status, const char *response)
{
    send_frame(c, hd_phx_reply(jr, ref, topic, status, response));
}

static void reply_error(hd_conn *c, const char *jr, const char *ref, const char *topic,
                        const char *reason)
{
    send_frame(c, hd_phx_reply_error(jr, ref, topic, reason));
}

static void send_phx_close(hd_conn *c, const char *jr, const char *topic)
{
    send_frame(c, hd_phx_close(jr, topic));
}

/* ---- subscriptions ---------------------------------------------------------- */

static void drop_sub(hd_channel_ctx *ch, hd_sub *sub)
{
    hd_presence_untrack(&ch->eng->pres, sub);
    hd_topics_unsubscribe(&ch->eng->topics, sub);
}

/* Leaves the channel of sub: unlinks it, then tells the leave hooks (the
 * topic's name is copied first: the topic may go with its last
 * subscriber). Without a leave hook nothing is copied. The hooks may
 * close c. */
static void leave_sub(hd_channel_ctx *ch, hd_conn *c, hd_sub *sub)
{
    if (!hd_script_has(ch->sc, HD_HOOK_LEAVE)) {
        drop_sub(ch, sub);
        return;
    }
    char name[HD_TOPIC_MAX_BYTES + 1];
    size_t n = sub->topic->len < sizeof name ? sub->topic->len : sizeof name - 1;
    memcpy(name, sub->topic->name, n);
    drop_sub(ch, sub);
    hd_hook_leave(ch->sc, c, name, n);
}

static void park_drop(hd_channel_ctx *ch, hd_conn *c);

/* The socket is closing (hd_ws_handler.on_close): leaves every joined
 * topic (no frames sent), each with its leave hooks, then the disconnect
 * hooks; once per connection, also when a hook closes c meanwhile. */
static void on_close(void *ud, hd_conn *c, const char *reason)
{
    hd_channel_ctx *ch = ud;
    park_drop(ch, c);
    if (c->flags & HD_CF_LEFT) return;
    c->flags |= HD_CF_LEFT;
    while (c->subs) leave_sub(ch, c, c->subs);
    hd_hook_disconnect(ch->sc, c, reason);
    /* (A disconnect hook cannot join: c takes no more messages.) */
    while (c->subs) drop_sub(ch, c->subs);
}

/* ---- sockets whose hook waits ----------------------------------------------------- */

/* While a join or message hook of a socket waits (herald.http.request),
 * the socket's later messages wait behind it, in order, as in Phoenix,
 * where a socket handles one message at a time; other sockets go on. At
 * most PARK_MAX_MSGS messages or PARK_MAX_BYTES queue: beyond, the socket
 * is not read until its hook is answered. */
#define PARK_MAX_MSGS 64
#define PARK_MAX_BYTES (1u << 20)

typedef struct qmsg {
    struct qmsg *next;
    size_t len;
    int opcode, refused;
    uint8_t data[];
} qmsg;

/* A socket whose hook waits: in ch->parked by connection id. */
typedef struct park {
    struct park *hnext;
    uint64_t conn_id;
    hd_hook_run *run;            /* the hook it waits for; NULL once answered */
    void *ctx;                   /* the run's context: freed here if the run is cancelled */
    void (*ctx_free)(void *ctx);
    qmsg *head, *tail;           /* its messages meanwhile */
    size_t n, bytes;
    int stopped;                 /* reading stopped: the queue is full */
    int draining, dead;          /* its queue is being handled; it closed meanwhile */
} park;

static park **park_slot(hd_channel_ctx *ch, uint64_t id)
{
    size_t i = (size_t)((id * 0x9E3779B97F4A7C15ULL) >> 32) & (ch->parked_cap - 1);
    park **pp = &ch->parked[i];
    while (*pp && (*pp)->conn_id != id) pp = &(*pp)->hnext;
    return pp;
}

static park *park_find(hd_channel_ctx *ch, uint64_t id)
{
    return ch->parked_cap ? *park_slot(ch, id) : NULL;
}

/* Room for one more: the table doubles at one entry per bucket. */
static int park_grow(hd_channel_ctx *ch)
{
    if (ch->nparked < ch->parked_cap) return 0;
    size_t cap = ch->parked_cap ? ch->parked_cap * 2 : 64, ocap = ch->parked_cap;
    park **t = calloc(cap, sizeof *t), **old = ch->parked;
    if (!t) return HD_ENOMEM;
    ch->parked = t;
    ch->parked_cap = cap;
    for (size_t i = 0; i < ocap; i++)
        for (park *p = old[i], *next; p; p = next) {
            next = p->hnext;
            p->hnext = NULL;
            *park_slot(ch, p->conn_id) = p; /* (the end of its new chain) */
        }
    free(old);
    return 0;
}

/* c waits for run (ctx, its context, freed by ctx_free if the run is
 * cancelled): its messages queue from now on. HD_ENOMEM: the caller
 * cancels the run. */
static int park_begin(hd_channel_ctx *ch, hd_conn *c, hd_hook_run *run, void *ctx,
                      void (*ctx_free)(void *))
{
    park *p = park_find(ch, c->id);
    if (!p) {
        if (park_grow(ch) || !(p = calloc(1, sizeof *p))) return HD_ENOMEM;
        p->conn_id = c->id;
        *park_slot(ch, c->id) = p;
        ch->nparked++;
    }
    p->run = run;
    p->ctx = ctx;
    p->ctx_free = ctx_free;
    c->flags |= HD_CF_BUSY;
    return 0;
}

static void park_free(hd_channel_ctx *ch, park *p)
{
    *park_slot(ch, p->conn_id) = p->hnext;
    ch->nparked--;
    for (qmsg *m = p->head, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    free(p);
}

/* The socket's hook is answered: the park no longer holds it (its
 * context is the answer's now). */
static void park_answered(hd_channel_ctx *ch, uint64_t id)
{
    park *p = park_find(ch, id);
    if (p) p->run = p->ctx = NULL;
}

/* Queues a message of a socket whose hook waits. */
static void park_add(hd_channel_ctx *ch, hd_conn *c, int opcode, const uint8_t *data, size_t len,
                     int refused)
{
    park *p = park_find(ch, c->id);
    qmsg *m = p ? malloc(sizeof *m + len) : NULL;
    if (!m) {
        hd_error("conn %llu: out of memory queueing a message behind a waiting hook",
                 (unsigned long long)c->id);
        hd_conn_shut(c, 1011, "out of memory");
        return;
    }
    m->next = NULL;
    m->len = len;
    m->opcode = opcode;
    m->refused = refused;
    memcpy(m->data, data, len);
    if (p->tail) p->tail->next = m;
    else p->head = m;
    p->tail = m;
    p->n++;
    p->bytes += len;
    if (p->n >= PARK_MAX_MSGS || p->bytes >= PARK_MAX_BYTES) {
        /* (every time: reading may have been started again meanwhile, by
         * http.c handing over the bytes that came with the upgrade) */
        p->stopped = 1;
        hd_conn_read_stop(c);
    }
}

/* The socket closes: a hook still waiting is cancelled (its answer would
 * go nowhere), its queue goes. */
static void park_drop(hd_channel_ctx *ch, hd_conn *c)
{
    park *p = park_find(ch, c->id);
    if (!p) return;
    c->flags &= ~HD_CF_BUSY;
    if (p->run) {
        hd_hook_run *run = p->run;
        void *ctx = p->ctx;
        p->run = p->ctx = NULL;
        hd_hook_cancel(run);
        p->ctx_free(ctx);
    }
    if (p->draining) p->dead = 1;
    else park_free(ch, p);
}

static int dispatch(hd_channel_ctx *ch, hd_conn *c, int opcode, uint8_t *data, size_t len,
                    int refused);

/* After a waiting hook's answer: the messages that queued meanwhile are
 * handled in order, until one waits again (the rest stay queued). */
static void park_resume(hd_channel_ctx *ch, uint64_t id)
{
    park *p = park_find(ch, id);
    hd_conn *c = hd_net_find(ch->net, id);
    if (!p || p->run) return;
    if (!c) {
        park_free(ch, p);
        return;
    }
    c->flags &= ~HD_CF_BUSY;
    p->draining = 1;
    while (p->head && !p->dead && !(c->flags & HD_CF_BUSY) && hd_conn_open(c)) {
        qmsg *m = p->head;
        p->head = m->next;
        if (!p->head) p->tail = NULL;
        p->n--;
        p->bytes -= m->len;
        dispatch(ch, c, m->opcode, m->data, m->len, m->refused);
        free(m);
    }
    p->draining = 0;
    if (!p->dead && (c->flags & HD_CF_BUSY)) return;
    int stopped = p->stopped && !p->dead;
    park_free(ch, p);
    if (stopped && hd_conn_open(c)) hd_conn_read_start(c);
}

void hd_channel_free(hd_channel_ctx *ch)
{
    for (size_t i = 0; i < ch->parked_cap; i++)
        while (ch->parked[i]) {
            park *p = ch->parked[i];
            if (p->run) {
                hd_hook_cancel(p->run);
                p->ctx_free(p->ctx);
            }
            park_free(ch, p);
        }
    free(ch->parked);
    ch->parked = NULL;
    ch->parked_cap = ch->nparked = 0;
}

/* ---- a recheck after a reload ---------------------------------------------------- */

typedef struct recheck {
    hd_channel_ctx *ch;
    uint64_t conn_id;
    char *join_ref;
    size_t tlen;
    char topic[];
} recheck;

/* The join hook's new answer (hd_hook_done): a refusal closes the
 * channel, if it is still the one that was rechecked. */
static void rechecked(void *ud, hd_hook_result *res)
{
    recheck *k = ud;
    hd_channel_ctx *ch = k->ch;
    hd_conn *c = hd_net_find(ch->net, k->conn_id);
    hd_sub *s = c && hd_conn_open(c) ? hd_topics_sub_of(c, k->topic, k->tlen) : NULL;
    const char *jr = s ? hd_sub_join_ref(s) : NULL;
    if (!res->verdict && s && (jr ? k->join_ref && strcmp(jr, k->join_ref) == 0 : !k->join_ref)) {
        send_phx_close(c, jr, k->topic);
        leave_sub(ch, c, s);
        ch->rechecks_closed++;
    }
    free(k->join_ref);
    free(k);
}

size_t hd_channel_recheck(hd_channel_ctx *ch, hd_conn *c)
{
    size_t before = ch->rechecks_closed;
    hd_sub *s = c->kind != HD_CONN_HTTP ? c->subs : NULL;
    while (s && hd_conn_open(c)) {
        hd_sub *next = s->cnext;
        const char *jr = hd_sub_join_ref(s);
        recheck *k = calloc(1, sizeof *k + s->topic->len + 1);
        if (!k || (jr && !(k->join_ref = strdup(jr)))) {
            hd_error("conn %llu: out of memory rechecking a join", (unsigned long long)c->id);
            free(k);
            break;
        }
        k->ch = ch;
        k->conn_id = c->id;
        k->tlen = s->topic->len;
        memcpy(k->topic, s->topic->name, k->tlen);
        /* (answered at once, or later: the channel is found again then) */
        hd_hook_join_start(ch->sc, c, k->topic, k->tlen, NULL, rechecked, k);
        s = next;
    }
    return ch->rechecks_closed - before;
}

/* ---- Phoenix messages ------------------------------------------------------ */

/* Sets herald's keys of a history join's response over the join hook's
 * answer (an object; another answer is kept as it is): epoch and offset
 * (none when epoch is NULL: the stream is unknown), and recovered when the
 * join asked with since; a hook's own keys of those names go. */
static void merge_history(hd_str *answer, const char *epoch, uint64_t top, int asked, int ok)
{
    json_error_t jerr;
    json_t *o = answer->p ? json_loadb(answer->p, answer->len, JSON_ALLOW_NUL, &jerr) : json_object();
    if (json_is_object(o)) {
        json_object_del(o, "epoch");
        json_object_del(o, "offset");
        json_object_del(o, "recovered");
        if (epoch) {
            json_object_set_new(o, "epoch", json_string(epoch));
            json_object_set_new(o, "offset", json_integer((json_int_t)top));
        }
        if (asked) json_object_set_new(o, "recovered", json_boolean(ok));
        char *text = json_dumps(o, JSON_COMPACT);
        if (text) {
            hd_str_free(answer);
            hd_str_adds(answer, text);
            free(text);
        }
    }
    json_decref(o);
}

/* The since of a join payload: 1 with *since when it is {epoch, offset}
 * well formed (*epoch then points into payload), 0 when absent or not. */
static int since_of(json_t *payload, const char **epoch, size_t *elen, uint64_t *since)
{
    json_t *sv = json_object_get(payload, "since");
    json_t *ev = json_object_get(sv, "epoch"), *ov = json_object_get(sv, "offset");
    if (!json_is_string(ev) || !json_is_integer(ov) || json_integer_value(ov) < 0) return 0;
    *epoch = json_string_value(ev);
    *elen = json_string_length(ev);
    *since = (uint64_t)json_integer_value(ov);
    return 1;
}

/* Whether a replay of bytes fits c's send queue behind the join's reply
 * (its response answer, plus the envelope and the fields merge_history
 * adds). The replay is queued at once, behind the reply: one that does
 * not fit would close the connection as a slow consumer (1013) before the
 * reply is out, and the client would come back with the same since again
 * and again; refused, it refetches once. */
static int replay_fits(const hd_channel_ctx *ch, const hd_conn *c, size_t bytes, uint64_t n,
                       const hd_str *answer, size_t tlen, const char *jr, const char *ref)
{
    /* (bytes counts the V2 frames kept; each of n V1 copies is longer by
     * its keys, 27 bytes, and at most 6 more when its header grows) */
    if (c->flags & HD_CF_V1) bytes += (size_t)n * 33;
    /* (Each byte of a JSON string takes 6 at most, escaped; 96: the fields.) */
    size_t reply = 128 + 6 * (tlen + (jr ? strlen(jr) : 0) + (ref ? strlen(ref) : 0)) +
                   (answer->p ? answer->len : 2) + 96;
    return !bytes || c->wq_bytes + reply + bytes <= ch->cfg->send_queue_bytes;
}

static void count_recovery(hd_channel_ctx *ch, int asked, int ok)
{
    if (!asked) return;
    if (ok) ch->eng->hist.recovered++;
    else ch->eng->hist.not_recovered++;
}

/* A join of a topic with history: the reply's response gets the stream's
 * epoch and offset (and "recovered" when the join asked with since), set
 * over what the join hook answered (an object; another answer is kept as
 * it is). Returns 1 when the messages after *since are to be replayed. */
static int history_answer(hd_channel_ctx *ch, hd_conn *c, hd_stream *hs, const hd_topic_policy *p,
                          json_t *payload, hd_str *answer, uint64_t *since, const char *jr,
                          const char *ref)
{
    const char *epoch = NULL;
    size_t elen = 0;
    int asked = json_object_get(payload, "since") != NULL, ok = 0;
    if (since_of(payload, &epoch, &elen, since)) {
        ok = hd_history_can_recover(hs, p, epoch, elen, *since, uv_now(ch->net->loop)) &&
             replay_fits(ch, c, hd_history_replay_bytes(hs, *since),
                        hs->top > *since ? hs->top - *since : 0, answer, hs->len, jr, ref);
    }
    count_recovery(ch, asked, ok);
    merge_history(answer, hs->epoch, hs->top, asked, ok);
    return ok;
}

/* ---- a join of a topic with history, in a cluster: answered once its read is back */

typedef struct jwait {
    hd_channel_ctx *ch;
    uint64_t conn_id;
    uint64_t since;              /* UINT64_MAX: none (or malformed) */
    int asked;                   /* the payload had a since */
    char epoch[17];              /* the since's epoch ("" when it cannot match) */
    uint32_t recover_max, ttl_ms;
    hd_str answer;               /* the join hook's */
    char *jr, *ref;
    size_t tlen;
    char topic[];
} jwait;

static void jwait_free(jwait *w)
{
    hd_str_free(&w->answer);
    free(w->jr);
    free(w->ref);
    free(w);
}

/* Whether r holds every message after w->since, each younger than the
 * topic's history_ttl_ms; *first is the first one's index then. */
static int covered(const jwait *w, const hd_recovery *r, size_t *first)
{
    if (!w->asked || !r->ok || w->since == UINT64_MAX || strcmp(r->epoch, w->epoch) != 0 ||
        w->since > r->top || r->top - w->since > w->recover_max)
        return 0;
    size_t i = 0;
    while (i < r->n && r->offsets[i] <= w->since) i++;
    *first = i;
    for (uint64_t want = w->since + 1; want <= r->top; want++, i++)
        if (i >= r->n || r->offsets[i] != want || r->times[i] + w->ttl_ms <= r->now_ms) return 0;
    return 1;
}

/* The read is back (hd_recover_fn): the reply, what was missed (when
 * recovered), what came live meanwhile, then live. The socket or its
 * channel may have gone meanwhile: nothing is sent then. */
static void joined(void *ud, const hd_recovery *r)
{
    jwait *w = ud;
    hd_channel_ctx *ch = w->ch;
    hd_conn *c = hd_net_find(ch->net, w->conn_id);
    hd_sub *s = c && hd_conn_open(c) ? hd_topics_sub_of(c, w->topic, w->tlen) : NULL;
    const char *mine = w->jr ? w->jr : w->ref, *theirs = s ? hd_sub_join_ref(s) : NULL;
    if (!s || !s->joining || (mine && (!theirs || strcmp(theirs, mine) != 0))) {
        jwait_free(w);
        return;
    }
    size_t first = 0, bytes = 0;
    int ok = covered(w, r, &first);
    uint64_t missed = ok ? r->top - w->since : 0;
    for (uint64_t i = 0; i < missed; i++) bytes += r->frames[first + i]->len;
    if (ok && !replay_fits(ch, c, bytes, missed, &w->answer, w->tlen, w->jr, w->ref)) ok = 0;
    count_recovery(ch, w->asked, ok);
    merge_history(&w->answer, r->ok ? r->epoch : NULL, r->top, w->asked, ok);
    reply(c, w->jr, w->ref, w->topic, "ok", w->answer.p ? w->answer.p : "{}");
    for (uint64_t i = 0; ok && i < missed; i++) hd_topics_send(c, r->frames[first + i]);
    s->joining = 0;
    /* Live messages up to the read's top may still be on their way (Redis
     * writes the subscriber link and the command link in either order):
     * they were replayed, or are behind the offset the reply gave. */
    s->floor = r->ok ? r->top : 0;
    for (size_t i = 0; i < r->nheld; i++)
        if (!r->ok || r->held_offsets[i] > r->top) hd_topics_send(c, r->held[i]);
    const hd_topic_policy *p = hd_topic_policy_of(&ch->eng->topics, s->topic);
    if (p->presence && p->tracked) hd_presence_send_state(&ch->eng->pres, s);
    jwait_free(w);
}

/* Holds the join's reply until the cluster read its history; the
 * subscription takes nothing live meanwhile (the read's joiners get it). */
static void join_later(hd_channel_ctx *ch, hd_conn *c, hd_sub *s, const hd_topic_policy *p,
                       const char *jr, const char *ref, json_t *payload, hd_str *answer)
{
    hd_topic *tp = s->topic;
    jwait *w = calloc(1, sizeof *w + tp->len + 1);
    if (!w) goto oom;
    w->ch = ch;
    w->conn_id = c->id;
    w->since = UINT64_MAX;
    w->asked = json_object_get(payload, "since") != NULL;
    const char *epoch = NULL;
    size_t elen = 0;
    uint64_t since;
    if (since_of(payload, &epoch, &elen, &since)) {
        w->since = since;
        if (elen == 16) memcpy(w->epoch, epoch, 16);
    }
    w->recover_max = p->recover_max;
    w->ttl_ms = p->history_ttl_ms;
    w->answer = *answer;
    *answer = (hd_str)HD_STR_INIT;
    w->jr = jr ? strdup(jr) : NULL;
    w->ref = ref ? strdup(ref) : NULL;
    if ((jr && !w->jr) || (ref && !w->ref)) goto oom;
    w->tlen = tp->len;
    memcpy(w->topic, tp->name, tp->len);
    s->joining = 1;
    if (hd_cluster_recover(ch->cluster, tp->name, tp->len, p, w->since, joined, w) != 0) {
        hd_recovery none;
        memset(&none, 0, sizeof none);
        joined(w, &none); /* (answered at once, without an epoch) */
    }
    return;
oom:
    hd_error("conn %llu: out of memory joining a topic", (unsigned long long)c->id);
    reply_error(c, jr, ref, tp->name, "join crashed");
    drop_sub(ch, s); /* (refused: not left joined) */
    if (w) jwait_free(w);
}

/* The join hook answered: the subscription, its reply, what history gives. */
static void join_answered(hd_channel_ctx *ch, hd_conn *c, const char *jr, const char *ref,
                          const char *topic, size_t tlen, json_t *payload, hd_hook_result *res)
{
    hd_str answer = res->reply, meta = res->meta;
    res->reply = res->meta = (hd_str)HD_STR_INIT;
    if (!res->verdict) {
        hd_str_free(&answer);
        hd_str_free(&meta);
        ch->st->joins_refused++;
        reply_error(c, jr, ref, topic, res->reason);
        return;
    }
    hd_sub *old = hd_topics_sub_of(c, topic, tlen);
    if (old) {
        /* A duplicate join closes the old channel first (Phoenix does). */
        send_phx_close(c, hd_sub_join_ref(old), topic);
        leave_sub(ch, c, old);
        if (!hd_conn_open(c)) { /* a leave hook closed it */
            hd_str_free(&answer);
            hd_str_free(&meta);
            return;
        }
    } else if (c->nsubs >= ch->cfg->max_topics_per_socket) {
        hd_str_free(&answer);
        hd_str_free(&meta);
        ch->st->joins_refused++;
        reply_error(c, jr, ref, topic, "too many channels joined");
        return;
    }
    hd_sub *s = hd_topics_subscribe(&ch->eng->topics, topic, tlen, c, jr ? jr : ref);
    if (!s) {
        hd_error("conn %llu: out of memory joining a topic", (unsigned long long)c->id);
        hd_str_free(&answer);
        hd_str_free(&meta);
        reply_error(c, jr, ref, topic, "join crashed");
        return;
    }
    ch->st->joins++;
    /* The topic hook runs here once per topic and reload; presence tracking
     * follows the policy. */
    const hd_topic_policy *p = hd_topic_policy_of(&ch->eng->topics, s->topic);
    if (hd_presence_track(&ch->eng->pres, s, meta.p) != 0)
        hd_error("presence: out of memory tracking a join");
    if (ch->cluster && p->history_size) {
        join_later(ch, c, s, p, jr, ref, payload, &answer);
        hd_str_free(&answer);
        hd_str_free(&meta);
        return;
    }
    hd_stream *hs = hd_history_open(&ch->eng->hist, topic, tlen, p, uv_now(ch->net->loop));
    uint64_t since = 0;
    int replay = hs && history_answer(ch, c, hs, p, payload, &answer, &since, jr, ref);
    reply(c, jr, ref, topic, "ok", answer.p ? answer.p : "{}");
    /* What was missed, in order, before anything live (nothing runs between). */
    if (replay) hd_history_replay(hs, since, c);
    if (p->presence && p->tracked) hd_presence_send_state(&ch->eng->pres, s);
    hd_str_free(&answer);
    hd_str_free(&meta);
}

/* A join or client push whose hook may wait: what its answer needs. */
typedef struct waiting {
    hd_channel_ctx *ch;
    uint64_t conn_id;
    char *jr, *ref;
    json_t *payload;             /* join: its payload (a reference) */
    int now;                     /* the answer comes inside the hook's start */
    size_t tlen;
    char topic[];
} waiting;

static void waiting_free(void *p)
{
    waiting *w = p;
    free(w->jr);
    free(w->ref);
    json_decref(w->payload);
    free(w);
}

/* A context for a hook of c's about topic, or NULL (answered "join crashed"). */
static waiting *waiting_new(hd_channel_ctx *ch, hd_conn *c, const char *jr, const char *ref,
                            const char *topic, size_t tlen, json_t *payload)
{
    waiting *w = calloc(1, sizeof *w + tlen + 1);
    if (!w || (jr && !(w->jr = strdup(jr))) || (ref && !(w->ref = strdup(ref)))) {
        hd_error("conn %llu: out of memory for a hook", (unsigned long long)c->id);
        if (w) waiting_free(w);
        reply_error(c, jr, ref, topic, payload ? "join crashed" : "internal error");
        return NULL;
    }
    w->ch = ch;
    w->conn_id = c->id;
    w->payload = json_incref(payload);
    w->now = 1;
    w->tlen = tlen;
    memcpy(w->topic, topic, tlen);
    return w;
}

/* run (started for w's socket) waits: the socket's messages queue. */
static void waits(hd_channel_ctx *ch, hd_conn *c, hd_hook_run *run, waiting *w)
{
    w->now = 0;
    if (!hd_conn_open(c)) { /* the hook closed its own socket, then began to wait */
        hd_hook_cancel(run);
        waiting_free(w);
        return;
    }
    if (park_begin(ch, c, run, w, waiting_free) == 0) return;
    hd_error("conn %llu: out of memory while a hook waits", (unsigned long long)c->id);
    hd_hook_cancel(run);
    reply_error(c, w->jr, w->ref, w->topic, w->payload ? "join crashed" : "internal error");
    waiting_free(w);
}

/* Takes w's answer: returns its socket if it is still open (else NULL). */
static hd_conn *answered(waiting *w)
{
    if (!w->now) park_answered(w->ch, w->conn_id);
    hd_conn *c = hd_net_find(w->ch->net, w->conn_id);
    return c && hd_conn_open(c) ? c : NULL;
}

/* After w's answer: w goes, and what the socket sent meanwhile is handled. */
static void go_on(waiting *w)
{
    hd_channel_ctx *ch = w->ch;
    uint64_t id = w->conn_id;
    int now = w->now;
    waiting_free(w);
    if (!now) park_resume(ch, id);
}

static void join_done(void *ud, hd_hook_result *res)
{
    waiting *w = ud;
    hd_conn *c = answered(w);
    if (c) join_answered(w->ch, c, w->jr, w->ref, w->topic, w->tlen, w->payload, res);
    go_on(w);
}

static void on_join(hd_channel_ctx *ch, hd_conn *c, const char *jr, const char *ref,
                    const char *topic, size_t tlen, json_t *payload)
{
    const char *why = tlen == 0 || tlen > HD_TOPIC_MAX_BYTES ? "invalid topic"
                      : ch->join_gate ? ch->join_gate(ch->gate_ud, c, topic, tlen, payload)
                                      : NULL;
    if (why) {
        ch->st->joins_refused++;
        reply_error(c, jr, ref, topic, why);
        return;
    }
    if (!hd_script_has(ch->sc, HD_HOOK_JOIN)) { /* (no context to keep) */
        hd_hook_result res = {.verdict = 1};
        join_answered(ch, c, jr, ref, topic, tlen, payload, &res);
        return;
    }
    waiting *w = waiting_new(ch, c, jr, ref, topic, tlen, payload);
    if (!w) return;
    hd_hook_run *run = hd_hook_join_start(ch->sc, c, topic, tlen, payload, join_done, w);
    if (run) waits(ch, c, run, w);
}

static void on_leave(hd_channel_ctx *ch, hd_conn *c, const char *jr, const char *ref,
                     const char *topic, size_t tlen)
{
    hd_sub *s = hd_topics_sub_of(c, topic, tlen);
    /* A leave carrying a stale join_ref raced a newer join: drop it. */
    if (s && jr && hd_sub_join_ref(s) && strcmp(jr, hd_sub_join_ref(s)) != 0) return;
    reply(c, jr, ref, topic, "ok", "{}");
    if (!s) return;
    send_phx_close(c, hd_sub_join_ref(s), topic);
    leave_sub(ch, c, s);
}

/* A string with no NUL in it: the refs, topic and event are C strings
 * from here on ("\u0000" is valid JSON, kept only inside payloads). */
static int c_string(json_t *v)
{
    return json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v);
}

static const char *str_or_null(json_t *v, int *ok)
{
    if (json_is_null(v)) return NULL;
    if (c_string(v)) return json_string_value(v);
    *ok = 0;
    return NULL;
}

static void message_done(void *ud, hd_hook_result *res)
{
    waiting *w = ud;
    hd_conn *c = answered(w);
    if (c && res->verdict == 1)
        reply(c, w->jr, w->ref, w->topic, "ok", res->reply.p ? res->reply.p : "{}");
    else if (c && res->verdict == 2)
        reply_error(c, w->jr, w->ref, w->topic, res->reason);
    go_on(w);
}

/* A client push on a joined topic goes to the message hook, which may
 * answer; without one there is no reply. */
static void on_client_push(hd_channel_ctx *ch, hd_conn *c, const char *jr, const char *ref,
                           const char *topic, size_t tlen, const char *event, json_t *payload)
{
    if (!hd_script_has(ch->sc, HD_HOOK_MESSAGE)) return;
    waiting *w = waiting_new(ch, c, jr, ref, topic, tlen, NULL);
    if (!w) return;
    hd_hook_run *run = hd_hook_message_start(ch->sc, c, topic, tlen, event, payload,
                                             message_done, w);
    if (run) waits(ch, c, run, w);
}

/* The fields of a client message in c's serializer: V2 an array
 * [join_ref, ref, topic, event, payload] (extra elements ignored), V1 an
 * object {"topic","event","payload","ref"} with no join_ref (other keys
 * ignored). Returns 1 when msg is such a message, with refs strings or
 * null and a payload object. */
static int fields_of(const hd_conn *c, json_t *msg, const char **jr, const char **ref,
                     json_t **topic, json_t **event, json_t **payload)
{
    int ok = 1;
    *jr = *ref = NULL;
    if (c->flags & HD_CF_V1) {
        if (!json_is_object(msg)) return 0;
        json_t *r = json_object_get(msg, "ref");
        *ref = r ? str_or_null(r, &ok) : NULL;
        *topic = json_object_get(msg, "topic");
        *event = json_object_get(msg, "event");
        *payload = json_object_get(msg, "payload");
    } else {
        if (!json_is_array(msg) || json_array_size(msg) < 5) return 0;
        *jr = str_or_null(json_array_get(msg, 0), &ok);
        *ref = str_or_null(json_array_get(msg, 1), &ok);
        *topic = json_array_get(msg, 2);
        *event = json_array_get(msg, 3);
        *payload = json_array_get(msg, 4);
    }
    return ok && c_string(*topic) && c_string(*event) && json_is_object(*payload);
}

/* Handles one text message; returns 0, or non-zero after closing. A
 * refused one (over the client message rate) is answered "rate limited"
 * when it has a ref, and goes no further: no join, no hook. */
static int on_phoenix(hd_channel_ctx *ch, hd_conn *c, const uint8_t *data, size_t len,
                      int refused)
{
    ch->st->ws_msgs_in++;
    json_error_t jerr;
    json_t *msg = json_loadb((const char *)data, len, JSON_ALLOW_NUL, &jerr);
    const char *jr, *ref;
    json_t *topic = NULL, *event = NULL, *payload = NULL;
    if (!msg || !fields_of(c, msg, &jr, &ref, &topic, &event, &payload)) {
        ch->st->ws_bad_msgs++;
        hd_debug("conn %llu: not a Phoenix %s message", (unsigned long long)c->id,
                 c->flags & HD_CF_V1 ? "V1" : "V2");
        json_decref(msg);
        hd_conn_shut(c, 1007, "invalid Phoenix message");
        return 1;
    }
    const char *t = json_string_value(topic), *ev = json_string_value(event);
    size_t tlen = json_string_length(topic);
    if (refused) {
        if (ref) reply_error(c, jr, ref, t, "rate limited");
    } else if (strcmp(ev, "heartbeat") == 0 && strcmp(t, "phoenix") == 0) {
        reply(c, NULL, ref, t, "ok", "{}");
    } else if (strcmp(ev, "phx_join") == 0) {
        on_join(ch, c, jr, ref, t, tlen, payload);
    } else if (strcmp(ev, "phx_leave") == 0) {
        on_leave(ch, c, jr, ref, t, tlen);
    } else {
        hd_sub *s = hd_topics_sub_of(c, t, tlen);
        if (!s) {
            reply_error(c, NULL, ref, t, "unmatched topic");
        } else if (!jr || !hd_sub_join_ref(s) || strcmp(jr, hd_sub_join_ref(s)) == 0) {
            /* (A stale join_ref is dropped silently, as Phoenix does.) */
            on_client_push(ch, c, jr, ref, t, tlen, ev, payload);
        }
    }
    json_decref(msg);
    return 0;
}

/* A string of a binary message's header, NUL-terminated into out
 * (HD_PHX_BIN_MAX + 1 bytes); NULL when empty (a ref left out). */
static const char *bin_str(char *out, const uint8_t *p, size_t n)
{
    memcpy(out, p, n);
    out[n] = 0;
    return n ? out : NULL;
}

/* Handles one binary message (the V2 binary format): a push to a joined
 * topic goes to the message hooks with its payload as bytes; returns 0,
 * or non-zero after closing. Control messages (joins, leaves,
 * heartbeats) are JSON text in phoenix.js, and V1 has no binary: those
 * close, as a malformed message does (1007 with the reason). */
static int on_binary(hd_channel_ctx *ch, hd_conn *c, const uint8_t *data, size_t len,
                     int refused)
{
    ch->st->ws_msgs_in++;
    if (c->flags & HD_CF_V1) {
        ch->st->ws_bad_msgs++;
        hd_conn_shut(c, 1003, "binary frames are not supported in V1");
        return 1;
    }
    hd_phx_bin m;
    const char *why = hd_phx_parse_binary(data, len, &m);
    char jrb[HD_PHX_BIN_MAX + 1], refb[HD_PHX_BIN_MAX + 1], tb[HD_PHX_BIN_MAX + 1],
        evb[HD_PHX_BIN_MAX + 1];
    const char *jr = NULL, *ref = NULL, *t = NULL, *ev = NULL;
    if (!why) {
        jr = bin_str(jrb, m.join_ref, m.jrlen);
        ref = bin_str(refb, m.ref, m.reflen);
        t = bin_str(tb, m.topic, m.tlen);
        ev = bin_str(evb, m.event, m.elen);
        if (strncmp(ev, "phx_", 4) == 0 || strcmp(ev, "heartbeat") == 0)
            why = "a control event (send it as JSON text)";
    }
    if (why) {
        char reason[100];
        ch->st->ws_bad_msgs++;
        snprintf(reason, sizeof reason, "invalid binary message: %s", why);
        hd_debug("conn %llu: %s", (unsigned long long)c->id, reason);
        hd_conn_shut(c, 1007, reason);
        return 1;
    }
    hd_sub *s = refused ? NULL : hd_topics_sub_of(c, t, m.tlen);
    if (refused) {
        if (ref) reply_error(c, jr, ref, t, "rate limited");
    } else if (!s) {
        reply_error(c, NULL, ref, t, "unmatched topic");
    } else if ((!jr || !hd_sub_join_ref(s) || strcmp(jr, hd_sub_join_ref(s)) == 0) &&
               hd_script_has(ch->sc, HD_HOOK_MESSAGE)) {
        waiting *w = waiting_new(ch, c, jr, ref, t, m.tlen, NULL);
        hd_hook_run *run = w ? hd_hook_message_binary_start(ch->sc, c, t, m.tlen, ev, m.payload,
                                                            m.plen, message_done, w)
                             : NULL;
        if (run) waits(ch, c, run, w);
    }
    return 0;
}

static int dispatch(hd_channel_ctx *ch, hd_conn *c, int opcode, uint8_t *data, size_t len,
                    int refused)
{
    if (opcode == HD_WS_BINARY) return on_binary(ch, c, data, len, refused);
    return on_phoenix(ch, c, data, len, refused);
}

/* A message (hd_ws_handler.on_message): handled now, or queued behind
 * the socket's waiting hook. */
static int on_message(void *ud, hd_conn *c, int opcode, uint8_t *data, size_t len, int refused)
{
    if (c->flags & HD_CF_BUSY) {
        park_add(ud, c, opcode, data, len, refused);
        return !hd_conn_open(c);
    }
    return dispatch(ud, c, opcode, data, len, refused);
}

static const hd_ws_handler handler = {on_message, on_close};

void hd_channel_init(hd_channel_ctx *ch, const hd_config *cfg, hd_stats *st, hd_net *net,
                     hd_engine *eng, hd_scripts *sc)
{
    memset(ch, 0, sizeof *ch);
    hd_wsconn_init(&ch->ws, cfg, st, &handler, ch);
    hd_lp_init(&ch->lp, net->loop, cfg, st, net, &handler, ch);
    ch->cfg = cfg;
    ch->st = st;
    ch->net = net;
    ch->eng = eng;
    ch->sc = sc;
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

/* An opening (a WebSocket upgrade or a long-poll session) whose
 * authenticate hook may wait. */
typedef struct upgrading {
    hd_http_wait w;
    hd_channel_ctx *ch;
    hd_hook_result *res;
    int longpoll, v1;
    int phoenix;                 /* a WebSocket client offered the "phoenix" subprotocol */
} upgrading;

/* A refusal of an opening: the HTTP status and message, or a refusal
 * reason (HD_REFUSE_*, answered 503 with its message). */
typedef struct refusal {
    int status;
    const char *msg;
    int reason;                  /* -1: none */
    unsigned retry;
} refusal;

/* Whether a new socket of transport longpoll fits: the node takes sockets
 * and has room (a long-poll session has no descriptor, so only
 * limits.max_connections counts for it). */
static int room(hd_channel_ctx *ch, int longpoll, refusal *why)
{
    const hd_net *net = ch->net;
    int full = net->nws + net->nlp >= ch->cfg->max_connections || (!longpoll && net->nws >= net->ws_cap);
    why->status = 503;
    why->reason = !ch->accepting ? HD_REFUSE_DRAINING : full ? HD_REFUSE_WS_CAPACITY : -1;
    why->retry = 0;
    if (why->reason < 0) return 1;
    why->msg = hd_refusal_message(why->reason);
    hd_net_count_refusal(ch->net, why->reason);
    return 0;
}

static void refuse(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r, int longpoll, const refusal *why)
{
    ch->st->ws_rejected++;
    if (longpoll) /* (phoenix.js: 403 closes for good, 500 retries) */
        hd_lp_error(c, r, why->status, why->status == 403 ? 403 : 500, why->msg, 1);
    else if (why->reason >= 0) hd_http_refuse(c, r, why->reason, why->retry);
    else hd_http_error(c, r, why->status, why->msg, NULL, 1);
}

/* The last checks and the switch, with authenticate's answer; the socket
 * carries its identity and assigns then. */
static void opening_answered(upgrading *u, hd_conn *c, hd_http_req *r)
{
    hd_channel_ctx *ch = u->ch;
    hd_hook_result *res = u->res;
    refusal why = {403, res->reason, -1, 0};
    char accept[29];
    /* (the hook may have waited: the drain may have begun meanwhile) */
    if (!res->verdict || !room(ch, u->longpoll, &why)) {
        refuse(ch, c, r, u->longpoll, &why);
        return;
    }
    if (u->longpoll) {
        hd_conn *sc = hd_lp_open(&ch->lp, c, r, u->v1);
        if (sc && hd_conn_set_identity(sc, res->id)) {
            hd_error("conn %llu: out of memory setting an identity", (unsigned long long)sc->id);
            hd_conn_close(sc); /* (its next poll is told it is gone) */
        } else if (sc) {
            sc->assigns = res->assigns;
            res->assigns = NULL;
        }
        return;
    }
    if (hd_conn_set_identity(c, res->id)) {
        hd_http_error(c, r, 403, "out of memory", NULL, 1);
    } else if (hd_wsconn_check(c, r, 1, accept) == 0) {
        free(c->assigns);
        c->assigns = res->assigns;
        res->assigns = NULL;
        if (hd_wsconn_accept(&ch->ws, c, r, accept, u->phoenix ? "phoenix" : NULL) == 0) return;
    }
    ch->st->ws_rejected++;
}

static void opening_later(void *ud, hd_conn *c, hd_http_req *r) { opening_answered(ud, c, r); }

static void auth_done(void *ud, hd_hook_result *res)
{
    upgrading *u = ud;
    u->res = res;
    if (hd_http_wait_end(&u->w, opening_later, u)) u->ch->sc->ss.discarded++;
    free(u);
}

/* The client's token: a WebSocket offers it as a subprotocol (*phoenix
 * set when it offers "phoenix" too), a long poll in X-Phoenix-AuthToken
 * (phoenix.js's authToken). Malloc'd, or NULL. */
static char *token_of(const hd_http_req *r, int longpoll, int *phoenix)
{
    size_t len = 0;
    *phoenix = 0;
    if (longpoll) {
        const char *t = hd_http_header(r, "x-phoenix-authtoken", &len);
        return t ? strndup(t, len) : NULL;
    }
    char *token = NULL;
    const char *proto = hd_http_header(r, "sec-websocket-protocol", &len);
    if (proto) parse_protocols(proto, len, phoenix, &token);
    return token;
}

/* Runs authenticate, then answers (now, or once it is answered). */
static void authenticate(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r, int longpoll, int v1)
{
    upgrading *u = malloc(sizeof *u);
    if (!u) {
        refusal why = {503, "out of memory", -1, 0};
        refuse(ch, c, r, longpoll, &why);
        return;
    }
    hd_http_wait_init(&u->w, c, r);
    u->ch = ch;
    u->longpoll = longpoll;
    u->v1 = v1;
    hd_hook_req view;
    hd_http_hook_req(r, &view);
    char *token = token_of(r, longpoll, &u->phoenix);
    hd_hook_run *run = hd_hook_authenticate_start(ch->sc, c, &view, token, auth_done, u);
    free(token);
    if (run) hd_http_wait_hook(&u->w, run);
}

/* ws.allowed_origins: a browser's Origin must be one of them (cross-site
 * WebSocket hijacking); a request without Origin (not a browser) passes. */
static int origin_allowed(const hd_config *cfg, const hd_http_req *r)
{
    if (!cfg->nallowed_origins) return 1;
    size_t ol = 0;
    const char *o = hd_http_header(r, "origin", &ol);
    if (!o) return 1;
    for (size_t i = 0; i < cfg->nallowed_origins; i++)
        if (hd_origin_match(cfg->allowed_origins[i], o, ol)) return 1;
    return 0;
}

/* The checks of an opening before authenticate: returns 1 with *v1 (the
 * client speaks V1: no vsn is V1, as Phoenix defaults it to 1.0.0), or 0
 * with why. */
static int may_open(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r, int longpoll, int *v1,
                    refusal *why)
{
    char vsn[32];
    *why = (refusal){403, NULL, -1, 0};
    if (!origin_allowed(ch->cfg, r)) {
        ch->st->ws_bad_origin++;
        why->msg = "origin not allowed";
        return 0;
    }
    *v1 = !hd_http_query_param(r, "vsn", vsn, sizeof vsn) || strncmp(vsn, "1.", 2) == 0;
    if (!*v1 && strncmp(vsn, "2.", 2) != 0) {
        why->msg = "unsupported vsn";
        return 0;
    }
    if (!room(ch, longpoll, why)) return 0;
    /* (a client named by X-Forwarded-For is admitted here, at its upgrade) */
    if ((c->flags & HD_CF_XFF) && !hd_conn_admit(c, &why->reason, &why->retry)) {
        why->status = 503;
        why->msg = hd_refusal_message(why->reason);
        return 0;
    }
    return 1;
}

void hd_channel_handshake(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r, int upgrade)
{
    char accept[29];
    int v1 = 0;
    refusal why;
    if (hd_wsconn_check(c, r, upgrade, accept) != 0) {
        ch->st->ws_rejected++; /* (answered) */
    } else if (!may_open(ch, c, r, 0, &v1, &why)) {
        refuse(ch, c, r, 0, &why);
    } else {
        c->flags = (c->flags & ~(uint32_t)HD_CF_V1) | (v1 ? HD_CF_V1 : 0);
        authenticate(ch, c, r, 0, v1);
    }
}

void hd_channel_longpoll(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r)
{
    int v1 = 0;
    refusal why;
    if (hd_lp_request(&ch->lp, c, r)) return; /* (a session's, answered) */
    if (!may_open(ch, c, r, 1, &v1, &why)) refuse(ch, c, r, 1, &why);
    else authenticate(ch, c, r, 1, v1);
}

void hd_channel_close(hd_channel_ctx *ch, uv_close_cb cb, void *data) { hd_lp_close(&ch->lp, cb, data); }
