#define _GNU_SOURCE /* memmem */
#include "cluster.h"
#include "err.h"
#include "log.h"
#include "phx.h"
#include "util.h"
#include "ws.h"

#include <hiredis/async.h>
#include <jansson.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAN_PREFIX "herald:t:{"
#define NODE_PREFIX "herald:n:{"
#define SUB_BATCH 512          /* channels per SUBSCRIBE */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define PROBE_IDLE_MS 5000     /* a subscribed link silent this long is probed */
#define PROBE_WAIT_MS 5000     /* and declared dead if the probe does not come back */
#define CONNECT_MS 2000        /* longest wait for a connection (or the link's confirmations) */

/* ---- hiredis on libuv -------------------------------------------------------------
 *
 * Our own adapter: hiredis 0.14's adapters/libuv.h returns from its poll
 * callback on any error status, so a refused or reset connection is never
 * handed to hiredis (no connect or disconnect callback: the link would be
 * dead for good). Here an error status is handed on as the events being
 * waited for, and hiredis finds the socket error itself (hiredis 1.x does
 * the same). */

typedef struct uvev {
    redisAsyncContext *ac;
    uv_poll_t poll;
    int events;
} uvev;

static void uvev_poll(uv_poll_t *h, int status, int events)
{
    uvev *p = h->data;
    int ev = status ? p->events : events;
    if (p->ac && (ev & UV_READABLE)) redisAsyncHandleRead(p->ac);
    if (p->ac && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
}

static void uvev_update(uvev *p, int add, int del)
{
    p->events = (p->events | add) & ~del;
    if (p->events) uv_poll_start(&p->poll, p->events, uvev_poll);
    else uv_poll_stop(&p->poll);
}

static void uvev_add_read(void *d) { uvev_update(d, UV_READABLE, 0); }
static void uvev_del_read(void *d) { uvev_update(d, 0, UV_READABLE); }
static void uvev_add_write(void *d) { uvev_update(d, UV_WRITABLE, 0); }
static void uvev_del_write(void *d) { uvev_update(d, 0, UV_WRITABLE); }
static void uvev_closed(uv_handle_t *h) { free(h->data); }

static void uvev_cleanup(void *d)
{
    uvev *p = d;
    p->ac = NULL; /* the context goes */
    uv_close((uv_handle_t *)&p->poll, uvev_closed);
}

static int uvev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data) return REDIS_ERR;
    uvev *p = calloc(1, sizeof *p);
    if (!p) return REDIS_ERR;
    if (uv_poll_init_socket(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return REDIS_ERR;
    }
    p->ac = ac;
    p->poll.data = p;
    ac->ev.addRead = uvev_add_read;
    ac->ev.delRead = uvev_del_read;
    ac->ev.addWrite = uvev_add_write;
    ac->ev.delWrite = uvev_del_write;
    ac->ev.cleanup = uvev_cleanup;
    ac->ev.data = p;
    return REDIS_OK;
}

/* A publish waiting for the link: a command's arguments (PUBLISH, or the
 * EVALSHA of a topic with history), one after the other in bytes. */
#define QMSG_ARGS 12
typedef struct qmsg {
    struct qmsg *next;
    uint64_t at;               /* loop time it was queued */
    int argc;
    size_t lens[QMSG_ARGS];
    char bytes[];
} qmsg;

/* A qmsg of argc arguments (copied), or NULL without memory. */
static qmsg *qmsg_new(int argc, const char *const *argv, const size_t *lens, uint64_t now)
{
    size_t total = 0;
    for (int i = 0; i < argc; i++) total += lens[i];
    qmsg *m = malloc(sizeof *m + total);
    if (!m) return NULL;
    m->next = NULL;
    m->at = now;
    m->argc = argc;
    char *p = m->bytes;
    for (int i = 0; i < argc; i++) {
        m->lens[i] = lens[i];
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
    }
    return m;
}

/* A channel name in a shard's subscribed set, or on its pending list. */
typedef struct cname {
    struct cname *next;
    size_t len;
    int confirmed;             /* Redis confirmed its SUBSCRIBE (set entries) */
    char name[];               /* the topic (not the channel) */
} cname;

/* One of a shard's two connections; ac->data points here. */
typedef struct rlink {
    struct hd_shard *s;
    redisAsyncContext *ac;     /* NULL while down (hiredis frees it) */
    int ready;                 /* connected, AUTH and SELECT done */
    int setup;                 /* set-up replies still to come */
} rlink;

typedef struct hd_shard {
    hd_cluster *c;
    size_t index;
    hd_redis_url url;
    char shown[320];           /* redis://host:port[/db], no password */
    rlink cmd;                 /* commands */
    rlink sub;                 /* subscribed */
    int linked;                /* both ready: the topics' SUBSCRIBE went out */
    int up;                    /* linked, and Redis confirmed every one of them */
    size_t confirm;            /* confirmations still to come */
    uint64_t linked_at;        /* loop time linked turned 1 */
    uint64_t connect_at;       /* loop time the connections were started */
    uint64_t backoff_ms;
    uint64_t retry_at;         /* loop time of the next connect, 0: now */
    qmsg *qhead, *qtail;
    size_t queued;
    size_t inflight;           /* PUBLISHes (and presence commands) awaiting their reply */
    int resync;                /* presence changes were not sent (too many in flight): all
                                * of this node's entries go again once there is room */
    cname **set;               /* topics subscribed on the current link */
    size_t nset, setcap;
    cname *pending;            /* topics whose subscription may have to change */
    uint64_t last_in;          /* loop time anything came on the subscribed link */
    uint64_t probe_at;         /* loop time a probe went out, 0: none */
    uint64_t reconnects;
} hd_shard;

/* ---- hashing ------------------------------------------------------------------- */

static uint64_t fnv64(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ULL;
    return h;
}

size_t hd_cluster_shard_of(const char *topic, size_t tlen, size_t n)
{
    /* Jump consistent hash (Lamping and Veach). */
    uint64_t key = fnv64(topic, tlen);
    int64_t b = -1, j = 0;
    while (j < (int64_t)n) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (size_t)(b < 0 ? 0 : b);
}

static uint32_t name_hash(const char *p, size_t n) { return (uint32_t)fnv64(p, n); }

/* ---- a shard's subscribed set ------------------------------------------------------- */

static cname *cname_new(const char *name, size_t len)
{
    cname *n = malloc(sizeof *n + len + 1);
    if (!n) return NULL;
    n->next = NULL;
    n->confirmed = 0;
    n->len = len;
    memcpy(n->name, name, len);
    n->name[len] = 0;
    return n;
}

static cname **set_slot(hd_shard *s, const char *name, size_t len)
{
    cname **pp = &s->set[name_hash(name, len) & (s->setcap - 1)];
    while (*pp && !((*pp)->len == len && memcmp((*pp)->name, name, len) == 0)) pp = &(*pp)->next;
    return pp;
}

static int set_has(hd_shard *s, const char *name, size_t len)
{
    return s->setcap && *set_slot(s, name, len) != NULL;
}

static void set_clear(hd_shard *s)
{
    for (size_t i = 0; i < s->setcap; i++)
        for (cname *n = s->set[i], *next; n; n = next) {
            next = n->next;
            free(n);
        }
    if (s->set) memset(s->set, 0, s->setcap * sizeof *s->set);
    s->nset = 0;
}

static void set_grow(hd_shard *s)
{
    size_t cap = s->setcap ? s->setcap * 2 : 64;
    cname **t = calloc(cap, sizeof *t);
    if (!t) return;
    for (size_t i = 0; i < s->setcap; i++)
        for (cname *n = s->set[i], *next; n; n = next) {
            next = n->next;
            size_t b = name_hash(n->name, n->len) & (cap - 1);
            n->next = t[b];
            t[b] = n;
        }
    free(s->set);
    s->set = t;
    s->setcap = cap;
}

static int set_add(hd_shard *s, const char *name, size_t len)
{
    if (s->nset >= s->setcap) set_grow(s);
    if (!s->setcap) return HD_ENOMEM;
    cname **pp = set_slot(s, name, len);
    if (*pp) return 0;
    if (!(*pp = cname_new(name, len))) return HD_ENOMEM;
    s->nset++;
    return 0;
}

static void set_del(hd_shard *s, const char *name, size_t len)
{
    if (!s->setcap) return;
    cname **pp = set_slot(s, name, len);
    if (!*pp) return;
    cname *n = *pp;
    *pp = n->next;
    free(n);
    s->nset--;
}

/* ---- channels and envelopes ------------------------------------------------------------- */

/* "herald:t:{<topic>}" into out (malloc'd); returns its length. */
static char *channel_of(const char *topic, size_t tlen, size_t *len)
{
    size_t pl = sizeof CHAN_PREFIX - 1;
    char *ch = malloc(pl + tlen + 2);
    if (!ch) return NULL;
    memcpy(ch, CHAN_PREFIX, pl);
    memcpy(ch + pl, topic, tlen);
    ch[pl + tlen] = '}';
    ch[pl + tlen + 1] = 0;
    *len = pl + tlen + 1;
    return ch;
}

/* The payload of a frame (past its WebSocket header). */
static const uint8_t *frame_payload(const hd_buf *f, size_t *len)
{
    int op;
    return hd_ws_frame_payload(f, &op, len);
}

/* ---- commands -------------------------------------------------------------------------- */

static void link_down(hd_shard *s, const char *why);
static void flush_queue(hd_shard *s);

static void replied(hd_shard *s);

static void on_publish_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    hd_shard *s = privdata;
    redisReply *r = reply;
    replied(s);
    if (!r || r->type == REDIS_REPLY_ERROR) s->c->cs.lost++;
    else if (s->qhead) flush_queue(s); /* room in flight again */
}

static void send_publish(hd_shard *s, const qmsg *m)
{
    const char *argv[QMSG_ARGS];
    const char *p = m->bytes;
    for (int i = 0; i < m->argc; i++) {
        argv[i] = p;
        p += m->lens[i];
    }
    if (redisAsyncCommandArgv(s->cmd.ac, on_publish_reply, s, m->argc, argv, m->lens) != REDIS_OK) {
        s->c->cs.lost++;
        return;
    }
    s->inflight++;
    s->c->cs.out++;
}

static void flush_queue(hd_shard *s)
{
    size_t max = s->c->cfg->cluster_queue_max;
    while (s->qhead && s->up && s->inflight < max) {
        qmsg *m = s->qhead;
        s->qhead = m->next;
        if (!s->qhead) s->qtail = NULL;
        s->queued--;
        send_publish(s, m);
        free(m);
    }
}

static void drop_queue(hd_shard *s)
{
    while (s->qhead) {
        qmsg *m = s->qhead;
        s->qhead = m->next;
        free(m);
        s->c->cs.lost++;
    }
    s->qtail = NULL;
    s->queued = 0;
}

/* (UN)SUBSCRIBE of up to SUB_BATCH channels at once. */
typedef struct batch {
    const char *argv[SUB_BATCH + 1];
    size_t lens[SUB_BATCH + 1];
    char *owned[SUB_BATCH];
    int n;
} batch;

static void on_message(redisAsyncContext *ac, void *reply, void *privdata);
/* (history across nodes, below) */
struct hread;
static void load_scripts(hd_shard *s);
static void issue_reads(hd_shard *s);
static void fail_reads(hd_shard *s);
static struct hread *find_read(hd_cluster *c, const char *topic, size_t tlen);
static void issue_read(struct hread *r);
static void hold_for_reads(hd_cluster *c, const char *topic, size_t tlen, uint64_t offset, hd_buf *f);

static void batch_send(hd_shard *s, batch *b, const char *verb)
{
    if (b->n == 0) return;
    b->argv[0] = verb;
    b->lens[0] = strlen(verb);
    int subscribe = verb[0] == 'S';
    /* SUBSCRIBE registers on_message for each channel; UNSUBSCRIBE has no
     * reply of its own (hiredis). */
    redisAsyncCommandArgv(s->sub.ac, subscribe ? on_message : NULL, s, b->n + 1, b->argv, b->lens);
    for (int i = 0; i < b->n; i++) free(b->owned[i]);
    b->n = 0;
}

static void batch_add(hd_shard *s, batch *b, const char *verb, const char *topic, size_t tlen)
{
    size_t cl;
    char *ch = channel_of(topic, tlen, &cl);
    if (!ch) return;
    b->owned[b->n] = ch;
    b->argv[b->n + 1] = ch;
    b->lens[b->n + 1] = cl;
    if (++b->n == SUB_BATCH) batch_send(s, b, verb);
}

/* ---- presence across nodes ------------------------------------------------------------
 *
 * Each node owns its entries on topics with presence events. It keeps them
 * in a hash per topic, "herald:p:{<topic>}", field "<node> <phx_ref>",
 * value "<key>\n<meta>", and announces every change on the topic's
 * channel: "p1 <node>\n+<ref>\n<key>\n<meta>", "p1 <node>\n-<ref>\n<key>",
 * or "p1 <node>\n!" (all of that node's entries go: a drain). A node that
 * gets its first subscriber of such a topic, or whose link comes back,
 * loads the hash (and drops what it holds of other nodes that the hash no
 * longer has). A node's liveness key, "herald:n:{<node>}:alive", lives
 * node_timeout_ms and is refreshed every heartbeat_ms (on the first shard);
 * a node whose key is gone has its entries withdrawn and deleted by
 * whichever peer notices first. */

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac, (void)reply;
    replied(privdata);
}

/* A command on the shard's link when it is up (else dropped: the next
 * link-up republishes what matters). */
static void command(hd_shard *s, redisCallbackFn *fn, void *privdata, int argc, const char **argv,
                    const size_t *lens)
{
    if (!s->linked || !s->cmd.ac) return;
    if (redisAsyncCommandArgv(s->cmd.ac, fn ? fn : on_cmd_reply, fn ? privdata : s, argc, argv,
                              lens) == REDIS_OK && !fn)
        s->inflight++;
}

static hd_shard *shard_for(hd_cluster *c, const char *topic, size_t tlen)
{
    return &c->shards[hd_cluster_shard_of(topic, tlen, c->nshards)];
}

/* "herald:p:{<topic>}" (malloc'd). */
static char *pres_key(const char *topic, size_t tlen, size_t *len)
{
    char *k = channel_of(topic, tlen, len);
    if (k) k[7] = 'p'; /* herald:t:{ -> herald:p:{ */
    return k;
}

static int presence_topic(hd_cluster *c, hd_topic *tp)
{
    return hd_topic_policy_of(&c->eng->topics, tp)->presence;
}

/* HSET (meta given) or HDEL (meta NULL) of an entry of this node's, and
 * its announcement to the peers. A change (not resync) while
 * cluster.queue_max commands are in flight on the link is not sent: the
 * shard resyncs instead once half of them are answered (republish: every
 * entry again, and the stale ones dropped), so that a Redis that falls
 * behind holds at most that many, and one copy of the node's presence. */
static void tell(hd_cluster *c, hd_topic *tp, const char *ref, size_t rl, const char *key,
                 const char *meta, int resync)
{
    hd_shard *s = shard_for(c, tp->name, tp->len);
    if (!s->linked) return;
    if (!resync && s->inflight >= c->cfg->cluster_queue_max) {
        if (!s->resync)
            hd_warn("cluster: %s: %zu commands in flight: presence changes wait for a resync",
                    s->shown, s->inflight);
        s->resync = 1;
        c->cs.pres_deferred++;
        return;
    }
    size_t hl, cl;
    char *hash = pres_key(tp->name, tp->len, &hl), *ch = channel_of(tp->name, tp->len, &cl);
    hd_str field = HD_STR_INIT, value = HD_STR_INIT, msg = HD_STR_INIT;
    hd_str_printf(&field, "%s %.*s", c->node, (int)rl, ref);
    hd_str_printf(&msg, "p1 %s\n%c%.*s\n%s", c->node, meta ? '+' : '-', (int)rl, ref, key);
    if (meta) {
        hd_str_printf(&value, "%s\n%s", key, meta);
        hd_str_printf(&msg, "\n%s", meta);
    }
    if (hash && ch && !field.oom && !value.oom && !msg.oom) {
        const char *argv[4] = {meta ? "HSET" : "HDEL", hash, field.p, value.p};
        size_t lens[4] = {4, hl, field.len, value.len};
        command(s, NULL, NULL, meta ? 4 : 3, argv, lens);
        const char *pargv[3] = {"PUBLISH", ch, msg.p};
        size_t plens[3] = {7, cl, msg.len};
        command(s, NULL, NULL, 3, pargv, plens);
    } else {
        hd_error("cluster: out of memory announcing presence");
    }
    free(hash);
    free(ch);
    hd_str_free(&field);
    hd_str_free(&value);
    hd_str_free(&msg);
}

/* A local entry joined or left (resync: it is told again). */
static void announce(hd_cluster *c, hd_topic *tp, const hd_pres *e, int joined, int resync)
{
    size_t rl;
    const char *ref = hd_pres_ref(e, &rl);
    tell(c, tp, ref, rl, hd_pres_key(e), joined ? hd_pres_meta(e) : NULL, resync);
}

static void on_local(void *ud, hd_topic *tp, const hd_pres *e, int joined)
{
    hd_cluster *c = ud;
    if (!c->closing) announce(c, tp, e, joined, 0);
}

/* A presence hash being loaded. The HGETALL runs on the command link and
 * the peers' announcements come on the other one, in either order, so what
 * is announced for the topic while the load is out is written down
 * ("\n+<node> <ref>", "\n-<node> <ref>", "\n!<node>") and wins over the
 * hash: an entry announced after the hash was read is kept, one that left
 * is not brought back. */
typedef struct load_req {
    struct load_req *prev, *next; /* c->loads */
    hd_cluster *c;
    uint32_t mark;               /* marks the entries its reply holds (never 0) */
    hd_str journal;
    size_t len;
    char topic[];
} load_req;

/* Notes an announcement (sign '+', '-' or '!' with ref NULL) on the loads
 * of tp that are out. */
static void journal_note(hd_cluster *c, const hd_topic *tp, char sign, const char *node,
                         const char *ref)
{
    for (load_req *q = c->loads; q; q = q->next)
        if (q->len == tp->len && memcmp(q->topic, tp->name, tp->len) == 0)
            hd_str_printf(&q->journal, "\n%c%s%s%s", sign, node, ref ? " " : "", ref ? ref : "");
}

/* Whether the journal has sign for (node, ref), or a '!' for node. */
static int journal_has(const load_req *q, char sign, const char *node, const char *ref,
                       size_t rl)
{
    if (!q->journal.p) return 0;
    hd_str pat = HD_STR_INIT;
    hd_str_printf(&pat, "\n%c%s %.*s", sign, node, (int)rl, ref);
    int has = 0;
    for (int pass = 0; pass < 2 && !has && !pat.oom; pass++) {
        const char *j = q->journal.p, *end = j + q->journal.len;
        while (!has && (j = memmem(j, (size_t)(end - j), pat.p, pat.len))) {
            j += pat.len;
            has = j == end || *j == '\n'; /* the whole entry, not a prefix */
        }
        if (sign == '+') break;
        hd_str_reset(&pat);
        hd_str_printf(&pat, "\n!%s", node);
    }
    hd_str_free(&pat);
    return has;
}

static void load_free(load_req *q)
{
    if (q->prev) q->prev->next = q->next;
    else q->c->loads = q->next;
    if (q->next) q->next->prev = q->prev;
    hd_str_free(&q->journal);
    free(q);
}

/* What a peer's presence message says; *p is past "p1 <node>\n". */
static void presence_message(hd_cluster *c, hd_topic *tp, const char *node, const char *p,
                             size_t n)
{
    hd_presence *pr = &c->eng->pres;
    if (n == 1 && p[0] == '!') {
        journal_note(c, tp, '!', node, NULL);
        hd_presence_withdraw(pr, tp, node);
        return;
    }
    const char *nl = n > 1 ? memchr(p, '\n', n) : NULL;
    if (!nl || (p[0] != '+' && p[0] != '-')) goto bad;
    const char *key = nl + 1, *end = p + n;
    const char *nl2 = memchr(key, '\n', (size_t)(end - key));
    if (p[0] == '+' && !nl2) goto bad;
    char *ref = strndup(p + 1, (size_t)(nl - p - 1));
    char *k = strndup(key, (size_t)((nl2 ? nl2 : end) - key));
    char *meta = nl2 ? strndup(nl2 + 1, (size_t)(end - nl2 - 1)) : NULL;
    if (ref && k) {
        journal_note(c, tp, p[0], node, ref);
        if (p[0] == '-') hd_presence_remove(pr, tp, node, k, ref);
        else if (meta && hd_presence_add(pr, tp, node, k, meta, ref) == HD_EJSON) c->cs.bad++;
    }
    free(ref);
    free(k);
    free(meta);
    return;
bad:
    c->cs.bad++;
}

/* A hash field and value: "<node> <ref>", "<key>\n<meta>". Returns 0 and
 * the parts (malloc'd), or -1. */
static int parse_entry(const redisReply *f, const redisReply *v, char **node, char **ref, char **key,
                       char **meta)
{
    *node = *ref = *key = *meta = NULL;
    if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) return -1;
    const char *sp = memchr(f->str, ' ', f->len), *nl = memchr(v->str, '\n', v->len);
    if (!sp || !nl) return -1;
    *node = strndup(f->str, (size_t)(sp - f->str));
    *ref = strndup(sp + 1, f->len - (size_t)(sp - f->str) - 1);
    *key = strndup(v->str, (size_t)(nl - v->str));
    *meta = strndup(nl + 1, v->len - (size_t)(nl - v->str) - 1);
    return *node && *ref && *key && *meta ? 0 : -1;
}

/* An entry of this node's (ref, key) in the topic's hash that it no
 * longer has: its leave was not stored or told (the link was down then),
 * so it is now (HDEL, and "-" to the peers). An entry added after the HGETALL
 * was sent is not in its reply; one removed since was told already, and
 * telling it again changes nothing. */
static void drop_if_stale(hd_cluster *c, hd_topic *tp, const char *ref, const char *key)
{
    size_t want = strlen(ref);
    for (hd_pres *e = tp->pres; e; e = e->next) {
        size_t rl;
        const char *er = e->sub ? hd_pres_ref(e, &rl) : NULL;
        if (er && rl == want && memcmp(er, ref, rl) == 0) return; /* ours still */
    }
    c->cs.stale++;
    tell(c, tp, ref, want, key, NULL, 1);
}

/* HGETALL of a topic's hash: the other nodes' entries become ours to
 * show; this node's that it no longer has are dropped; what we held of theirs that the hash no longer has goes (unless
 * announced since the load went out). */
static void on_loaded(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    load_req *q = privdata;
    hd_cluster *c = q->c;
    redisReply *r = reply;
    hd_topic *tp = c->closing ? NULL : hd_topics_find(&c->eng->topics, q->topic, q->len);
    if (tp && r && r->type == REDIS_REPLY_ARRAY) {
        hd_presence *pr = &c->eng->pres;
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            char *node, *ref, *key, *meta;
            if (parse_entry(r->element[i], r->element[i + 1], &node, &ref, &key, &meta) != 0)
                c->cs.bad++;
            else if (strcmp(node, c->node) == 0)
                drop_if_stale(c, tp, ref, key);
            else if (journal_has(q, '-', node, ref, strlen(ref)))
                ; /* (it left since) */
            else if (hd_presence_add(pr, tp, node, key, meta, ref) == HD_EJSON)
                c->cs.bad++;
            else
                hd_presence_mark(pr, tp, node, key, ref, q->mark);
            free(node), free(ref), free(key), free(meta);
        }
        for (hd_pres *e = tp->pres, *next; e; e = next) {
            next = e->next;
            if (e->sub) continue;
            size_t rl;
            const char *ref = hd_pres_ref(e, &rl);
            if (hd_pres_mark(e) != q->mark && !journal_has(q, '+', e->node, ref, rl)) {
                char *rs = strndup(ref, rl);
                if (rs) hd_presence_remove(pr, tp, e->node, hd_pres_key(e), rs);
                free(rs);
            }
        }
    }
    /* The joiners that waited get their presence_state now (also when the
     * link broke: then with this node's view). The diff of the joins
     * above repeats part of it: phoenix.js dedupes by phx_ref. */
    if (tp) hd_presence_loaded(&c->eng->pres, tp);
    load_free(q);
}

/* A load of tp's hash, linked on c->loads (NULL: out of memory). */
static load_req *load_new(hd_cluster *c, const char *topic, size_t len)
{
    load_req *q = calloc(1, sizeof *q + len);
    if (!q) return NULL;
    q->c = c;
    q->len = len;
    if (!++c->load_marks) c->load_marks++; /* (0 is "never marked") */
    q->mark = c->load_marks;
    memcpy(q->topic, topic, len);
    q->next = c->loads;
    if (c->loads) c->loads->prev = q;
    c->loads = q;
    return q;
}

/* Issues HGETALL of the topic's hash; returns 1 when sent. */
static int load_presence(hd_cluster *c, hd_topic *tp)
{
    hd_shard *s = shard_for(c, tp->name, tp->len);
    size_t hl = 0;
    char *hash = s->linked ? pres_key(tp->name, tp->len, &hl) : NULL;
    load_req *q = hash ? load_new(c, tp->name, tp->len) : NULL;
    const char *argv[2] = {"HGETALL", hash};
    size_t lens[2] = {7, hl};
    int sent = q && redisAsyncCommandArgv(s->cmd.ac, on_loaded, q, 2, argv, lens) == REDIS_OK;
    if (q && !sent) load_free(q);
    free(hash);
    return sent;
}

int hd_cluster_reaches(const hd_cluster *c, const char *node)
{
    return !c->closing && c->shards[hd_cluster_shard_of(node, strlen(node), c->nshards)].up;
}

int hd_cluster_to_node(hd_cluster *c, const char *node, const char *msg, size_t len)
{
    hd_shard *s = shard_for(c, node, strlen(node));
    char ch[320];
    int cl = snprintf(ch, sizeof ch, NODE_PREFIX "%s}", node);
    if (!s->up || c->closing || cl <= 0 || (size_t)cl >= sizeof ch) return HD_ECLOSED;
    const char *argv[3] = {"PUBLISH", ch, msg};
    size_t lens[3] = {7, (size_t)cl, len};
    command(s, NULL, NULL, 3, argv, lens);
    return 0;
}

/* This node's liveness key: set now, for node_timeout_ms. */
static void beat(hd_cluster *c)
{
    char key[320];
    int kl = snprintf(key, sizeof key, NODE_PREFIX "%s}:alive", c->node);
    char px[32];
    int pl = snprintf(px, sizeof px, "%llu", (unsigned long long)c->cfg->cluster_node_timeout_ms);
    const char *argv[5] = {"SET", key, "1", "PX", px};
    size_t lens[5] = {3, (size_t)kl, 1, 2, (size_t)pl};
    command(&c->shards[0], NULL, NULL, 5, argv, lens);
}

/* A node that is gone (its liveness key expired, or a newer incarnation
 * of it speaks): its entries are withdrawn here and deleted from the
 * hashes. */
static void bury(hd_cluster *c, const char *node, const char *why)
{
    hd_topics *t = &c->eng->topics;
    size_t n = 0;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext) {
            hd_shard *s = shard_for(c, tp->name, tp->len);
            size_t hl;
            char *hash = NULL;
            for (hd_pres *e = tp->pres; e; e = e->next) {
                if (e->sub || strcmp(e->node, node) != 0) continue;
                if (!hash && !(hash = pres_key(tp->name, tp->len, &hl))) break;
                size_t rl;
                const char *ref = hd_pres_ref(e, &rl);
                hd_str field = HD_STR_INIT;
                hd_str_printf(&field, "%s %.*s", node, (int)rl, ref);
                const char *argv[3] = {"HDEL", hash, field.p};
                size_t lens[3] = {4, hl, field.len};
                if (!field.oom) command(s, NULL, NULL, 3, argv, lens);
                hd_str_free(&field);
            }
            free(hash);
            journal_note(c, tp, '!', node, NULL);
            n += hd_presence_withdraw(&c->eng->pres, tp, node);
        }
    if (n) hd_info("cluster: node %s %s: %zu presence entr%s withdrawn", node, why, n,
                   n == 1 ? "y" : "ies");
}

/* A copy of the id of an older incarnation of node (the same "<name>~")
 * that has entries here, or NULL. */
static char *older_incarnation(hd_cluster *c, const char *node, size_t nl)
{
    hd_topics *t = &c->eng->topics;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext)
            for (hd_pres *e = tp->pres; e; e = e->next)
                if (!e->sub && strncmp(e->node, node, nl) == 0 && strcmp(e->node, node) != 0)
                    return strdup(e->node);
    return NULL;
}

/* A named node's message ("<name>~<boot>"): the entries of its older
 * incarnations go at once (a restart under the same name). Once per node
 * id heard: a scan of every entry is not for each message. */
static void supersede(hd_cluster *c, const char *node)
{
    const char *tilde = strchr(node, '~');
    if (!tilde) return;
    size_t ring = sizeof c->seen / sizeof *c->seen;
    for (size_t i = 0; i < ring && i < c->nseen; i++)
        if (c->seen[i] && strcmp(c->seen[i], node) == 0) return;
    size_t at = c->nseen++ % ring;
    free(c->seen[at]);
    c->seen[at] = strdup(node);
    char *old;
    while ((old = older_incarnation(c, node, (size_t)(tilde - node) + 1))) {
        bury(c, old, "was restarted");
        free(old);
    }
}

typedef struct alive_req {
    hd_cluster *c;
    char node[];
} alive_req;

/* EXISTS of a peer's liveness key: 0, and its entries are withdrawn here
 * and deleted from the hashes. */
static void on_alive(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    alive_req *q = privdata;
    hd_cluster *c = q->c;
    redisReply *r = reply;
    if (!c->closing && r && r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        bury(c, q->node, "is gone");
    free(q);
}

/* Asks whether each peer that has entries here is still alive. */
static void check_peers(hd_cluster *c)
{
    hd_shard *s = &c->shards[0];
    if (!s->up) return;
    const char *asked[64];
    size_t nasked = 0;
    hd_topics *t = &c->eng->topics;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext)
            for (hd_pres *e = tp->pres; e; e = e->next) {
                if (e->sub) continue;
                size_t k = 0;
                while (k < nasked && strcmp(asked[k], e->node) != 0) k++;
                if (k < nasked || nasked == sizeof asked / sizeof *asked) continue;
                asked[nasked++] = e->node;
                size_t nl = strlen(e->node);
                alive_req *q = malloc(sizeof *q + nl + 1);
                if (!q) continue;
                q->c = c;
                memcpy(q->node, e->node, nl + 1);
                char key[320];
                int kl = snprintf(key, sizeof key, NODE_PREFIX "%s}:alive", e->node);
                const char *argv[2] = {"EXISTS", key};
                size_t lens[2] = {6, (size_t)kl};
                if (redisAsyncCommandArgv(s->cmd.ac, on_alive, q, 2, argv, lens) != REDIS_OK) free(q);
            }
}

/* On link-up: this node's entries of the shard's topics again (the peers
 * dedupe), and the others' loaded. */
static void republish(hd_shard *s)
{
    hd_cluster *c = s->c;
    s->resync = 0;
    if (s->index == 0 && !c->withdrawn) beat(c);
    hd_topics *t = &c->eng->topics;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext) {
            if (hd_cluster_shard_of(tp->name, tp->len, c->nshards) != s->index) continue;
            if (!presence_topic(c, tp)) continue;
            for (hd_pres *e = tp->pres; e; e = e->next)
                if (e->sub && !c->withdrawn) announce(c, tp, e, 1, 1);
            load_presence(c, tp);
        }
}

/* A command of the link was answered: room in flight, and a resync that
 * waited for it. */
static void replied(hd_shard *s)
{
    if (s->inflight) s->inflight--;
    if (s->resync && s->up && !s->c->withdrawn && s->inflight <= s->c->cfg->cluster_queue_max / 2)
        republish(s);
}

/* Applies what changed since the last turn: a topic now with local
 * subscribers that the link does not have is subscribed, one without is
 * unsubscribed. */
static void sync_pending(hd_shard *s)
{
    if (!s->pending) return;
    batch sub = {.n = 0}, unsub = {.n = 0};
    while (s->pending) {
        cname *n = s->pending;
        s->pending = n->next;
        if (s->linked) {
            hd_topic *tp = hd_topics_find(&s->c->eng->topics, n->name, n->len);
            int have = set_has(s, n->name, n->len), loading = 0;
            if (tp && !have && set_add(s, n->name, n->len) == 0) {
                batch_add(s, &sub, "SUBSCRIBE", n->name, n->len);
                /* (the hash is loaded once the subscription is confirmed:
                 * a peer's change announced in between would be lost) */
                loading = presence_topic(s->c, tp);
            } else if (!tp && have) {
                set_del(s, n->name, n->len);
                batch_add(s, &unsub, "UNSUBSCRIBE", n->name, n->len);
            }
            /* Joiners waiting for a load that was not needed: now. */
            if (tp && tp->pres_loading && !loading) hd_presence_loaded(&s->c->eng->pres, tp);
        } else {
            hd_topic *tp = hd_topics_find(&s->c->eng->topics, n->name, n->len);
            if (tp) hd_presence_loaded(&s->c->eng->pres, tp);
        }
        free(n);
    }
    batch_send(s, &sub, "SUBSCRIBE");
    batch_send(s, &unsub, "UNSUBSCRIBE");
}

/* Subscribes every local topic of this shard (and the node's own probe
 * channel), then reports the link up and sends what waited. */
static void resubscribe(hd_shard *s)
{
    hd_cluster *c = s->c;
    set_clear(s);
    while (s->pending) { /* all of them are covered below */
        cname *n = s->pending;
        s->pending = n->next;
        free(n);
    }
    batch b = {.n = 0};
    char own[300];
    int ol = snprintf(own, sizeof own, NODE_PREFIX "%s}", c->node);
    const char *argv[2] = {"SUBSCRIBE", own};
    size_t lens[2] = {9, (size_t)ol};
    redisAsyncCommandArgv(s->sub.ac, on_message, s, 2, argv, lens);
    hd_topics *t = &c->eng->topics;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext) {
            if (hd_cluster_shard_of(tp->name, tp->len, c->nshards) != s->index) continue;
            if (set_add(s, tp->name, tp->len) == 0) batch_add(s, &b, "SUBSCRIBE", tp->name, tp->len);
        }
    batch_send(s, &b, "SUBSCRIBE");
    /* Up once Redis confirmed each of them (and the node's own channel):
     * only then do the queued publishes go out. */
    s->linked = 1;
    s->linked_at = uv_now(c->loop);
    s->confirm = s->nset + 1;
    s->backoff_ms = 0;
    s->last_in = s->linked_at;
    s->probe_at = 0;
}

/* Every channel of the link is confirmed: this node's presence goes out
 * again, the others' is loaded, and what waited is sent. */
static void link_up(hd_shard *s)
{
    s->up = 1;
    hd_info("cluster: %s up (%zu topic(s) subscribed)", s->shown, s->nset);
    load_scripts(s);
    republish(s);
    flush_queue(s);
    issue_reads(s);
}

/* ---- inbound --------------------------------------------------------------------------------- */

/* 1 when text is [null,null,<topic>,"msg",{...}]: what goes to clients
 * as it is must be a Phoenix message of this topic (Redis is shared: its
 * bytes are outside input). Parsed once per node, not per subscriber. */
static int phoenix_msg_of(const char *text, size_t len, const char *topic, size_t tlen)
{
    json_error_t e;
    json_t *j = json_loadb(text, len, JSON_ALLOW_NUL, &e); /* ("\u0000" is JSON) */
    json_t *t = json_array_get(j, 2), *ev = json_array_get(j, 3);
    int ok = json_is_array(j) && json_array_size(j) == 5 && json_is_null(json_array_get(j, 0)) &&
             json_is_null(json_array_get(j, 1)) && json_is_string(t) &&
             json_string_length(t) == tlen && memcmp(json_string_value(t), topic, tlen) == 0 &&
             json_is_string(ev) && strcmp(json_string_value(ev), "msg") == 0 &&
             json_is_object(json_array_get(j, 4));
    json_decref(j);
    return ok;
}

/* A decimal number at p (before end, at most 18 digits): its end, or
 * NULL when there is none. */
static const char *digits(const char *p, const char *end, uint64_t *v)
{
    const char *q = p;
    *v = 0;
    while (q < end && q - p < 18 && *q >= '0' && *q <= '9') *v = *v * 10 + (uint64_t)(*q++ - '0');
    return q > p ? q : NULL;
}

/* 1 when p (len bytes) is a V2 binary broadcast of topic under event:
 * the same check for binary messages (b1) as phoenix_msg_of. */
static int broadcast_of(const char *p, size_t len, const char *topic, size_t tlen,
                        const char *event, size_t elen)
{
    hd_phx_bin m;
    return !hd_phx_parse_broadcast((const uint8_t *)p, len, &m) && m.tlen == tlen &&
           memcmp(m.topic, topic, tlen) == 0 && m.elen == elen && memcmp(m.event, event, elen) == 0;
}

/* A message on a topic channel: "h1 <node> <elen>\n<event><phoenix json>",
 * "b1 <node> <elen>\n<event><binary broadcast>", or (history) h2. */
static void deliver(hd_shard *s, const char *ch, size_t clen, const char *p, size_t plen)
{
    hd_cluster *c = s->c;
    size_t pl = sizeof CHAN_PREFIX - 1;
    if (clen < pl + 1 || memcmp(ch, CHAN_PREFIX, pl) != 0 || ch[clen - 1] != '}') goto bad;
    const char *nl = memchr(p, '\n', plen);
    if (plen >= 3 && memcmp(p, "p1 ", 3) == 0 && nl) {
        const char *node = p + 3;
        size_t nodelen = (size_t)(nl - node);
        if (nodelen == strlen(c->node) && memcmp(node, c->node, nodelen) == 0) return;
        hd_topic *tp = hd_topics_find(&c->eng->topics, ch + pl, clen - pl - 1);
        char *n = strndup(node, nodelen);
        if (n) supersede(c, n);
        if (tp && n) presence_message(c, tp, n, nl + 1, (size_t)(p + plen - nl - 1));
        free(n);
        return;
    }
    /* h1: a message; b1: a binary one; h2: one of a topic with history,
     * with its offset (and the origin's own too: it did not deliver it
     * itself). */
    int h2 = plen >= 3 && memcmp(p, "h2 ", 3) == 0;
    int b1 = plen >= 3 && memcmp(p, "b1 ", 3) == 0;
    if (plen < 3 || (memcmp(p, "h1 ", 3) != 0 && !h2 && !b1) || !nl) goto bad;
    const char *node = p + 3, *sp = memchr(node, ' ', (size_t)(nl - node));
    if (!sp) goto bad;
    size_t nodelen = (size_t)(sp - node);
    if (!h2 && nodelen == strlen(c->node) && memcmp(node, c->node, nodelen) == 0) return; /* our own */
    uint64_t elen = 0, offset = 0;
    const char *end = digits(sp + 1, nl, &elen);
    if (h2 && end && *end == ' ') end = digits(end + 1, nl, &offset);
    const char *body = nl + 1;
    if (end != nl || elen > (size_t)(p + plen - body) || (h2 && !offset)) goto bad;
    const char *topic = ch + pl;
    size_t tlen = clen - pl - 1;
    if (!hd_topics_find(&c->eng->topics, topic, tlen)) return; /* left meanwhile */
    const char *msg = body + elen;
    size_t mlen = (size_t)(p + plen - body) - elen;
    if (b1 ? !broadcast_of(msg, mlen, topic, tlen, body, (size_t)elen)
           : !phoenix_msg_of(msg, mlen, topic, tlen))
        goto bad;
    hd_buf *f = hd_ws_frame(b1 ? HD_WS_BINARY : HD_WS_TEXT, msg, mlen);
    if (!f) {
        hd_error("cluster: out of memory framing a message");
        return;
    }
    c->cs.in++;
    if (h2) hold_for_reads(c, topic, tlen, offset, f);
    hd_publish_local_at(c->eng, topic, tlen, f, offset); /* shaped at its origin */
    hd_buf_unref(f);
    return;
bad:
    c->cs.bad++;
    hd_debug("cluster: a message on %.*s that is not Herald's", (int)clen, ch);
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    hd_shard *s = privdata;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
    s->last_in = uv_now(s->c->loop);
    s->probe_at = 0;
    redisReply *kind = r->element[0], *ch = r->element[1], *msg = r->element[2];
    if (kind->type != REDIS_REPLY_STRING) return;
    if (strcmp(kind->str, "subscribe") == 0) {
        size_t pl = sizeof CHAN_PREFIX - 1;
        if (ch->type == REDIS_REPLY_STRING && ch->len > pl && memcmp(ch->str, CHAN_PREFIX, pl) == 0 &&
            s->setcap) {
            cname *n = *set_slot(s, ch->str + pl, ch->len - pl - 1);
            if (n) n->confirmed = 1;
        }
        if (s->confirm && --s->confirm == 0 && s->linked) link_up(s);
        else if (s->up && ch->type == REDIS_REPLY_STRING && ch->len > pl) {
            struct hread *hr = find_read(s->c, ch->str + pl, ch->len - pl - 1);
            if (hr) issue_read(hr);
            /* The peers' presence entries, now that none of their changes
             * can pass unseen (the joiners waiting get them). */
            hd_topic *tp = hd_topics_find(&s->c->eng->topics, ch->str + pl, ch->len - pl - 1);
            if (tp && presence_topic(s->c, tp) && !load_presence(s->c, tp) && tp->pres_loading)
                hd_presence_loaded(&s->c->eng->pres, tp);
        }
        return;
    }
    if (strcmp(kind->str, "message") != 0) return;
    if (ch->type != REDIS_REPLY_STRING || msg->type != REDIS_REPLY_STRING) return;
    if (ch->len > sizeof NODE_PREFIX - 1 && memcmp(ch->str, NODE_PREFIX, sizeof NODE_PREFIX - 1) == 0) {
        /* our own channel: a probe come back, or another node's message */
        hd_cluster *c = s->c;
        if (!(msg->len == 5 && memcmp(msg->str, "probe", 5) == 0) && c->on_node_message && !c->closing)
            c->on_node_message(c->node_message_ud, msg->str, msg->len);
        return;
    }
    deliver(s, ch->str, ch->len, msg->str, msg->len);
}

/* ---- the link's life ---------------------------------------------------------------------------- */

static void check_ready(hd_shard *s)
{
    if (s->cmd.ready && s->sub.ready && !s->linked) resubscribe(s);
}

/* A reply to AUTH or SELECT: an error ends the link; the last one makes
 * the connection ready. */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rlink *l = privdata;
    redisReply *r = reply;
    if (!r) return; /* the link went: on_disconnect deals with it */
    if (r->type == REDIS_REPLY_ERROR) {
        hd_warn("cluster: %s refused the connection set-up: %s", l->s->shown, r->str);
        redisAsyncDisconnect(ac);
        return;
    }
    if (--l->setup == 0) {
        l->ready = 1;
        check_ready(l->s);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rlink *l = ac->data;
    hd_shard *s = l->s;
    if (l->ac != ac) return; /* already given up */
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        hd_debug("cluster: cannot connect to %s: %s", s->shown, ac->errstr);
        l->ac = NULL;
        link_down(s, ac->errstr);
        return;
    }
    redisAsyncContext *w = (redisAsyncContext *)ac;
    l->setup = 0;
    if (s->url.password[0]) {
        l->setup++;
        if (s->url.user[0])
            redisAsyncCommand(w, on_setup_reply, l, "AUTH %s %s", s->url.user, s->url.password);
        else
            redisAsyncCommand(w, on_setup_reply, l, "AUTH %s", s->url.password);
    }
    if (s->url.db) {
        l->setup++;
        redisAsyncCommand(w, on_setup_reply, l, "SELECT %d", s->url.db);
    }
    if (l->setup == 0) {
        l->ready = 1;
        check_ready(s);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rlink *l = ac->data;
    if (l->ac != ac) return; /* we let it go (link_down, close) */
    l->ac = NULL;            /* hiredis frees it after this callback */
    link_down(l->s, status == REDIS_OK ? "disconnected" : ac->errstr);
}

static void connect_link(hd_shard *s, rlink *l)
{
    l->ready = 0;
    l->ac = redisAsyncConnect(s->url.host, s->url.port);
    if (!l->ac || l->ac->err) {
        hd_debug("cluster: cannot connect to %s: %s", s->shown, l->ac ? l->ac->errstr : "no memory");
        if (l->ac) redisAsyncFree(l->ac);
        l->ac = NULL;
        return;
    }
    l->ac->data = l;
    if (uvev_attach(l->ac, s->c->loop) != REDIS_OK) {
        redisAsyncFree(l->ac);
        l->ac = NULL;
        return;
    }
    redisAsyncSetConnectCallback(l->ac, on_connect);
    redisAsyncSetDisconnectCallback(l->ac, on_disconnect);
}

/* Either connection is gone (or never came): end the other too, count
 * what was in flight, and retry after a jittered backoff. */
/* Lets both connections go now: pending callbacks run with no reply
 * (in-flight publishes are counted lost there). Safe inside a callback
 * (hiredis defers the free). */
static void let_go(hd_shard *s)
{
    redisAsyncContext *a = s->cmd.ac, *b = s->sub.ac;
    s->cmd.ac = s->sub.ac = NULL;
    s->cmd.ready = s->sub.ready = 0;
    if (a) redisAsyncFree(a);
    if (b) redisAsyncFree(b);
}

static void link_down(hd_shard *s, const char *why)
{
    hd_cluster *c = s->c;
    int was_up = s->linked;
    s->up = s->linked = 0;
    s->confirm = 0;
    hd_topics *t = &c->eng->topics;
    for (size_t i = 0; !c->closing && i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext)
            if (tp->pres_loading && hd_cluster_shard_of(tp->name, tp->len, c->nshards) == s->index)
                hd_presence_loaded(&c->eng->pres, tp);
    set_clear(s);
    fail_reads(s);
    let_go(s); /* both come back together */
    if (c->closing) return;
    if (was_up) {
        s->reconnects++;
        c->cs.reconnects++;
        hd_warn("cluster: %s down (%s): local delivery goes on, cross-node publishes queue",
                s->shown, why ? why : "?");
    }
    uint64_t b = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (b > BACKOFF_MAX_MS) b = BACKOFF_MAX_MS;
    s->backoff_ms = b;
    uint32_t rnd = 0;
    uv_random(NULL, NULL, &rnd, sizeof rnd, 0, NULL);
    s->retry_at = uv_now(c->loop) + b / 2 + rnd % (b + 1); /* 0.5 to 1.5 times */
}

static void connect_shard(hd_shard *s)
{
    s->retry_at = 0;
    s->connect_at = uv_now(s->c->loop);
    s->c->cs.attempts++;
    connect_link(s, &s->cmd);
    connect_link(s, &s->sub);
    if (!s->cmd.ac || !s->sub.ac) link_down(s, "cannot create a connection");
}

/* ---- observers -------------------------------------------------------------------------------------- */

/* Queues a command of the publish path (sent in order once the link is
 * up), or counts it lost when the queue is full or memory is out. */
static void enqueue(hd_shard *s, int argc, const char *const *argv, const size_t *lens)
{
    hd_cluster *c = s->c;
    qmsg *m = s->queued < c->cfg->cluster_queue_max ? qmsg_new(argc, argv, lens, uv_now(c->loop)) : NULL;
    if (!m) {
        c->cs.lost++;
        return;
    }
    if (s->qtail) s->qtail->next = m;
    else s->qhead = m;
    s->qtail = m;
    s->queued++;
    flush_queue(s);
}

/* ---- history across nodes ---------------------------------------------------------------
 *
 * A topic with history (policy history_size > 0) keeps its stream in Redis,
 * on its shard: "herald:h:{<topic>}", a Stream whose entry ids are
 * "<offset>-0", fields m (the Phoenix message, with its offset) and t (Redis
 * time, ms); and "herald:hm:{<topic>}", a hash: e (the epoch), o (the last
 * offset). A publish is one EVALSHA of APPEND_LUA: the next offset, XADD
 * (trimmed to history_size), both keys' expiry pushed to history_ttl_ms,
 * and the PUBLISH of "h2 <node> <elen> <offset>\n<event><message>": storage
 * and fan-out share one order on every node. Its origin does not deliver
 * it first: it comes back to the origin as to the others.
 *
 * A join on such a topic waits for one READ_LUA (epoch, top, Redis time,
 * and the entries after the lowest since of its joiners), sent once the
 * topic's SUBSCRIBE is confirmed, so that whatever comes after top arrives
 * live; what arrives while the read is out is held for its joiners (their
 * subscriptions take nothing live until served). Joins that come while a
 * read is out are served by the next one: a reconnect wave costs a couple
 * of reads per topic, not one per client. */

#define HIST_PREFIX "herald:h:{"
#define HMETA_PREFIX "herald:hm:{"

static const char APPEND_LUA[] =
    "local e = redis.call('HGET', KEYS[2], 'e')\n"
    "if not e then e = ARGV[7]; redis.call('DEL', KEYS[1]); redis.call('HSET', KEYS[2], 'e', e) end\n"
    "local o = redis.call('HINCRBY', KEYS[2], 'o', 1)\n"
    "local t = redis.call('TIME')\n"
    "local m = string.sub(ARGV[4], 1, -3) .. ',\"offset\":' .. o .. '}]'\n"
    "redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[5], o .. '-0', 'm', m, 't',\n"
    "           tostring(t[1] * 1000 + math.floor(t[2] / 1000)))\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[6])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[6])\n"
    "redis.call('PUBLISH', ARGV[1], ARGV[2] .. o .. '\\n' .. ARGV[3] .. m)\n"
    "return o\n";

static const char READ_LUA[] =
    "local e = redis.call('HGET', KEYS[2], 'e')\n"
    "if not e then e = ARGV[3]; redis.call('DEL', KEYS[1]); redis.call('HSET', KEYS[2], 'e', e, 'o', 0) end\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[4])\n"
    "local o = tonumber(redis.call('HGET', KEYS[2], 'o'))\n"
    "local t = redis.call('TIME')\n"
    "local r = {}\n"
    "if tonumber(ARGV[2]) > 0 then r = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2]) end\n"
    "return {e, o, t[1] * 1000 + math.floor(t[2] / 1000), r}\n";

static void sha_hex(const char *text, char out[41])
{
    uint8_t d[20];
    hd_sha1(text, strlen(text), d);
    for (int i = 0; i < 20; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void new_epoch(char out[17])
{
    uint8_t r[8] = {0};
    uv_random(NULL, NULL, r, sizeof r, 0, NULL);
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", r[i]);
}

/* "<prefix><topic>}" into buf (at least tlen + 16 bytes); returns its length. */
static size_t key_of(char *buf, const char *prefix, const char *topic, size_t tlen)
{
    size_t pl = strlen(prefix);
    memcpy(buf, prefix, pl);
    memcpy(buf + pl, topic, tlen);
    buf[pl + tlen] = '}';
    return pl + tlen + 1;
}

/* The scripts, loaded on every link-up before anything queued goes (the
 * command link is ordered: the EVALSHAs after them find them). */
static void load_scripts(hd_shard *s)
{
    const char *texts[2] = {APPEND_LUA, READ_LUA};
    for (int i = 0; i < 2; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", texts[i]};
        size_t lens[3] = {6, 4, strlen(texts[i])};
        redisAsyncCommandArgv(s->cmd.ac, NULL, NULL, 3, argv, lens);
    }
}

/* The engine's way out for a message of a topic with history: one
 * EVALSHA, queued like a PUBLISH (counted lost the same way). */
static size_t remote_append(void *ud, const char *topic, size_t tlen, const hd_topic_policy *p,
                            const char *event, size_t elen, hd_buf *frame)
{
    hd_cluster *c = ud;
    if (c->closing) return 0;
    hd_shard *s = shard_for(c, topic, tlen);
    size_t jl = 0, cl = 0;
    const uint8_t *json = frame_payload(frame, &jl);
    char *ch = channel_of(topic, tlen, &cl);
    char *keys = malloc(2 * (tlen + 16));
    if (!ch || !keys) {
        free(ch);
        free(keys);
        c->cs.lost++;
        return 0;
    }
    size_t k1 = key_of(keys, HIST_PREFIX, topic, tlen);
    size_t k2 = key_of(keys + k1, HMETA_PREFIX, topic, tlen);
    char head[400], size[24], ttl[24], epoch[17];
    int hl = snprintf(head, sizeof head, "h2 %s %zu ", c->node, elen);
    int sl = snprintf(size, sizeof size, "%u", p->history_size > HD_HISTORY_MAX ? HD_HISTORY_MAX : p->history_size);
    int tl = snprintf(ttl, sizeof ttl, "%u", p->history_ttl_ms ? p->history_ttl_ms : 1);
    new_epoch(epoch);
    /* ARGV: channel, head, event, message, size, ttl, the epoch a new stream gets */
    const char *argv[12] = {"EVALSHA", c->append_sha, "2", keys, keys + k1, ch, head,
                            event, (const char *)json, size, ttl, epoch};
    size_t lens[12] = {7, 40, 1, k1, k2, cl, (size_t)hl, elen, jl, (size_t)sl, (size_t)tl, 16};
    enqueue(s, 12, argv, lens);
    free(ch);
    free(keys);
    return 0;
}

typedef struct hwaiter {
    struct hwaiter *next;
    uint64_t since;              /* UINT64_MAX: none */
    hd_recover_fn fn;
    void *ud;
} hwaiter;

typedef struct hheld {
    struct hheld *next;
    uint64_t offset;
    hd_buf *frame;
} hheld;

typedef struct hread {
    struct hread *next;          /* c->reads */
    hd_cluster *c;
    hwaiter *out;                /* served by the read out (inflight) */
    hwaiter *wait;               /* by the next one */
    int inflight;
    hheld *held, **held_tail;    /* live messages since the read went out */
    size_t nheld;
    uint32_t ttl_ms, recover_max, size;
    size_t tlen;
    char topic[];
} hread;

static hread *find_read(hd_cluster *c, const char *topic, size_t tlen)
{
    for (hread *r = c->reads; r; r = r->next)
        if (r->tlen == tlen && memcmp(r->topic, topic, tlen) == 0) return r;
    return NULL;
}

static void drop_held(hread *r)
{
    while (r->held) {
        hheld *h = r->held;
        r->held = h->next;
        hd_buf_unref(h->frame);
        free(h);
    }
    r->held_tail = &r->held;
    r->nheld = 0;
}

static void free_read(hd_cluster *c, hread *r)
{
    for (hread **pp = &c->reads; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    drop_held(r);
    free(r);
}

/* Tells each waiter of list what the read found (res), and frees them. */
static void serve(hwaiter *list, const hd_recovery *res)
{
    while (list) {
        hwaiter *w = list;
        list = w->next;
        w->fn(w->ud, res);
        free(w);
    }
}

static void issue_read(hread *r);

/* Parses READ_LUA's answer and serves the joiners it was for. */
static void on_read(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    hread *r = privdata;
    hd_cluster *c = r->c;
    redisReply *x = reply;
    hd_recovery res;
    memset(&res, 0, sizeof res);
    size_t n = 0;
    uint64_t *offsets = NULL, *times = NULL;
    hd_buf **frames = NULL, **held = NULL;
    uint64_t *held_off = NULL;
    if (x && x->type == REDIS_REPLY_ARRAY && x->elements == 4 && x->element[0]->type == REDIS_REPLY_STRING &&
        x->element[0]->len == 16 && x->element[1]->type == REDIS_REPLY_INTEGER &&
        x->element[2]->type == REDIS_REPLY_INTEGER && x->element[3]->type == REDIS_REPLY_ARRAY) {
        redisReply *es = x->element[3];
        offsets = calloc(es->elements + 1, sizeof *offsets);
        times = calloc(es->elements + 1, sizeof *times);
        frames = calloc(es->elements + 1, sizeof *frames);
        res.ok = offsets && times && frames;
        for (size_t i = 0; res.ok && i < es->elements; i++) {
            redisReply *e = es->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
                e->element[1]->type != REDIS_REPLY_ARRAY || e->element[1]->elements != 4)
                break;
            redisReply *f = e->element[1];
            const redisReply *m = NULL, *t = NULL;
            for (size_t k = 0; k + 1 < f->elements; k += 2) {
                if (f->element[k]->type != REDIS_REPLY_STRING || f->element[k + 1]->type != REDIS_REPLY_STRING) continue;
                if (strcmp(f->element[k]->str, "m") == 0) m = f->element[k + 1];
                else if (strcmp(f->element[k]->str, "t") == 0) t = f->element[k + 1];
            }
            if (!m || !t) break;
            hd_buf *fr = hd_ws_frame(HD_WS_TEXT, m->str, m->len);
            if (!fr) break;
            offsets[n] = strtoull(e->element[0]->str, NULL, 10);
            times[n] = strtoull(t->str, NULL, 10);
            frames[n++] = fr;
        }
        res.epoch = x->element[0]->str;
        res.top = (uint64_t)x->element[1]->integer;
        res.now_ms = (uint64_t)x->element[2]->integer;
    } else if (x) {
        c->cs.bad++;
        hd_warn("cluster: a history read of %.*s failed: %s", (int)r->tlen, r->topic,
                x->type == REDIS_REPLY_ERROR ? x->str : "an unexpected answer");
    }
    res.n = n;
    res.offsets = offsets;
    res.times = times;
    res.frames = frames;
    held = calloc(r->nheld + 1, sizeof *held);
    held_off = calloc(r->nheld + 1, sizeof *held_off);
    if (held && held_off) {
        size_t i = 0;
        for (hheld *h = r->held; h; h = h->next, i++) {
            held[i] = h->frame;
            held_off[i] = h->offset;
        }
        res.nheld = i;
        res.held = held;
        res.held_offsets = held_off;
    }
    hwaiter *list = r->out;
    r->out = NULL;
    r->inflight = 0;
    serve(list, &res);
    for (size_t i = 0; i < n; i++) hd_buf_unref(frames[i]);
    free(offsets);
    free(times);
    free(frames);
    free(held);
    free(held_off);
    drop_held(r);
    if (r->wait && !c->closing) issue_read(r);
    else if (!r->wait) free_read(c, r);
}

/* The topic's SUBSCRIBE is confirmed on its shard's link. */
static int confirmed(hd_shard *s, const char *topic, size_t tlen)
{
    if (!s->up || !s->setcap) return 0;
    cname *n = *set_slot(s, topic, tlen);
    return n && n->confirmed;
}

/* Sends the read for the joiners waiting, when it can go: no read out,
 * the link up and the topic's SUBSCRIBE confirmed. */
static void issue_read(hread *r)
{
    hd_cluster *c = r->c;
    hd_shard *s = shard_for(c, r->topic, r->tlen);
    if (r->inflight || !r->wait || !confirmed(s, r->topic, r->tlen)) return;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (hwaiter *w = r->wait; w; w = w->next) {
        if (w->since < lo) lo = w->since;
        if (w->since != UINT64_MAX && w->since > hi) hi = w->since;
    }
    /* From the lowest since: what the one furthest behind may replay,
     * and the others' spans within it. */
    uint64_t count = lo == UINT64_MAX ? 0 : (hi - lo) + r->recover_max + 1;
    if (count > (uint64_t)r->size + 1) count = (uint64_t)r->size + 1;
    char *keys = malloc(2 * (r->tlen + 16));
    if (!keys) return;
    size_t k1 = key_of(keys, HIST_PREFIX, r->topic, r->tlen);
    size_t k2 = key_of(keys + k1, HMETA_PREFIX, r->topic, r->tlen);
    char from[24], cnt[24], ttl[24], epoch[17];
    int fl = snprintf(from, sizeof from, "%llu", (unsigned long long)(lo == UINT64_MAX ? 0 : lo + 1));
    int nl = snprintf(cnt, sizeof cnt, "%llu", (unsigned long long)count);
    int tl = snprintf(ttl, sizeof ttl, "%u", r->ttl_ms ? r->ttl_ms : 1);
    new_epoch(epoch);
    const char *argv[9] = {"EVALSHA", c->read_sha, "2", keys, keys + k1, from, cnt, epoch, ttl};
    size_t lens[9] = {7, 40, 1, k1, k2, (size_t)fl, (size_t)nl, 16, (size_t)tl};
    if (redisAsyncCommandArgv(s->cmd.ac, on_read, r, 9, argv, lens) == REDIS_OK) {
        r->out = r->wait;
        r->wait = NULL;
        r->inflight = 1;
        c->cs.history_reads++;
    }
    free(keys);
}

int hd_cluster_recover(hd_cluster *c, const char *topic, size_t tlen, const hd_topic_policy *p,
                       uint64_t since, hd_recover_fn fn, void *ud)
{
    /* Redis away: the join is answered now, without history (it would
     * wait for the link otherwise). */
    if (!shard_for(c, topic, tlen)->linked) return HD_ECLOSED;
    hread *r = find_read(c, topic, tlen);
    if (!r) {
        r = calloc(1, sizeof *r + tlen + 1);
        if (!r) return HD_ENOMEM;
        r->c = c;
        r->held_tail = &r->held;
        r->tlen = tlen;
        memcpy(r->topic, topic, tlen);
        r->next = c->reads;
        c->reads = r;
    }
    hwaiter *w = malloc(sizeof *w);
    if (!w) {
        if (!r->out && !r->wait) free_read(c, r);
        return HD_ENOMEM;
    }
    r->ttl_ms = p->history_ttl_ms;
    r->recover_max = p->recover_max;
    r->size = p->history_size > HD_HISTORY_MAX ? HD_HISTORY_MAX : p->history_size;
    w->since = since;
    w->fn = fn;
    w->ud = ud;
    w->next = r->wait;
    r->wait = w;
    issue_read(r);
    return 0;
}

/* A live message of a topic with history: held for the joiners whose read
 * is out. */
static void hold_for_reads(hd_cluster *c, const char *topic, size_t tlen, uint64_t offset, hd_buf *f)
{
    hread *r = find_read(c, topic, tlen);
    if (!r || !r->inflight) return;
    hheld *h = malloc(sizeof *h);
    if (!h) return; /* (its joiners then see a gap: recovery says so) */
    h->next = NULL;
    h->offset = offset;
    h->frame = hd_buf_ref(f);
    *r->held_tail = h;
    r->held_tail = &h->next;
    r->nheld++;
}

/* The shard's link went down: the joiners whose read was not sent yet
 * are told now (those of a read out hear from hiredis). */
static void fail_reads(hd_shard *s)
{
    hd_cluster *c = s->c;
    hd_recovery none;
    memset(&none, 0, sizeof none);
    for (hread *r = c->reads, *next; r; r = next) {
        next = r->next;
        if (shard_for(c, r->topic, r->tlen) != s || !r->wait) continue;
        hwaiter *list = r->wait;
        r->wait = NULL;
        serve(list, &none);
        if (!r->inflight) free_read(c, r);
    }
}

/* Every read whose topic is confirmed on s now. */
static void issue_reads(hd_shard *s)
{
    for (hread *r = s->c->reads; r; r = r->next)
        if (shard_for(s->c, r->topic, r->tlen) == s) issue_read(r);
}

static void on_publish(void *ud, const char *topic, size_t tlen, const char *event, size_t elen,
                       const char *data_json, size_t dlen, hd_buf *frame)
{
    hd_cluster *c = ud;
    if (c->closing) return;
    hd_buf *own = frame ? NULL : hd_phx_msg(topic, tlen, event, elen, data_json, dlen);
    const hd_buf *f = frame ? frame : own;
    size_t cl = 0, jl = 0;
    char *ch = f ? channel_of(topic, tlen, &cl) : NULL;
    const uint8_t *json = f ? frame_payload(f, &jl) : NULL;
    /* A binary publish (a V2 binary broadcast, no JSON) goes as b1. */
    int binary = f && f->data[0] == (0x80 | HD_WS_BINARY);
    char head[400];
    int hl = snprintf(head, sizeof head, "%s %s %zu\n", binary ? "b1" : "h1", c->node, elen);
    hd_shard *s = &c->shards[hd_cluster_shard_of(topic, tlen, c->nshards)];
    /* PUBLISH channel "<head><event><json, or the broadcast's bytes>" */
    size_t plen = (size_t)hl + elen + (json ? jl : 0);
    char small[4096]; /* (most messages: no allocation of their own) */
    char *payload = !ch ? NULL : plen <= sizeof small ? small : malloc(plen);
    if (payload) {
        memcpy(payload, head, (size_t)hl);
        memcpy(payload + hl, event, elen);
        if (json) memcpy(payload + hl + elen, json, jl);
        const char *argv[3] = {"PUBLISH", ch, payload};
        size_t lens[3] = {7, cl, plen};
        enqueue(s, 3, argv, lens);
    } else {
        c->cs.lost++;
    }
    if (payload != small) free(payload);
    free(ch);
    hd_buf_unref(own);
}

static void on_sync(uv_idle_t *h);

static void note_topic(void *ud, const char *topic, size_t tlen)
{
    hd_cluster *c = ud;
    if (c->closing) return;
    hd_shard *s = &c->shards[hd_cluster_shard_of(topic, tlen, c->nshards)];
    if (!s->linked) return; /* resubscribe() covers it when the link comes */
    /* A new topic with presence events: its first joiners' presence_state
     * waits until the other nodes' entries are loaded (sync_pending). */
    hd_topic *tp = hd_topics_find(&c->eng->topics, topic, tlen);
    if (tp && tp->nsubs == 0 && presence_topic(c, tp)) tp->pres_loading = 1;
    cname *n = cname_new(topic, tlen);
    if (!n) {
        hd_error("cluster: out of memory noting a topic");
        return;
    }
    n->next = s->pending;
    s->pending = n;
    /* Applied at the next tick of the turn: one batch per loop turn. */
    if (!uv_is_active((uv_handle_t *)&c->sync)) uv_idle_start(&c->sync, on_sync);
}

static void on_sync(uv_idle_t *h)
{
    hd_cluster *c = h->data;
    uv_idle_stop(h);
    for (size_t i = 0; i < c->nshards; i++) sync_pending(&c->shards[i]);
}

/* Every 100 ms: connect what is due, probe silent links. */
static void on_tick(uv_timer_t *t)
{
    hd_cluster *c = t->data;
    uint64_t now = uv_now(c->loop);
    if (!c->withdrawn && now - c->last_beat >= c->cfg->cluster_heartbeat_ms) {
        c->last_beat = now;
        beat(c);
        check_peers(c);
    }
    for (size_t i = 0; i < c->nshards; i++) {
        hd_shard *s = &c->shards[i];
        if (!s->cmd.ac && !s->sub.ac) {
            if (now >= s->retry_at) connect_shard(s);
            continue;
        }
        /* A connect (or its confirmations) that takes too long is given up. */
        if ((!s->linked && now - s->connect_at >= CONNECT_MS) ||
            (s->linked && !s->up && now - s->linked_at >= CONNECT_MS)) {
            link_down(s, "timed out");
            continue;
        }
        if (!s->up) continue;
        if (s->probe_at && now - s->probe_at >= PROBE_WAIT_MS) {
            hd_warn("cluster: %s: the subscribed link stopped answering: reconnecting", s->shown);
            link_down(s, "probe lost");
        } else if (!s->probe_at && now - s->last_in >= PROBE_IDLE_MS) {
            char own[300];
            int ol = snprintf(own, sizeof own, NODE_PREFIX "%s}", c->node);
            const char *argv[3] = {"PUBLISH", own, "probe"};
            size_t lens[3] = {7, (size_t)ol, 5};
            redisAsyncCommandArgv(s->cmd.ac, NULL, NULL, 3, argv, lens);
            s->probe_at = now;
        }
    }
}

static const hd_topic_observer topic_observer = {note_topic, note_topic, NULL};

int hd_cluster_init(hd_cluster *c, uv_loop_t *loop, const hd_config *cfg, hd_engine *eng,
                    const char *node)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->cfg = cfg;
    c->eng = eng;
    c->node = node;
    c->shards = calloc(cfg->ncluster_urls, sizeof *c->shards);
    if (!c->shards) return HD_ENOMEM;
    c->nshards = cfg->ncluster_urls;
    for (size_t i = 0; i < c->nshards; i++) {
        hd_shard *s = &c->shards[i];
        char err[256];
        if (hd_redis_url_parse(cfg->cluster_urls[i], &s->url, err, sizeof err)) {
            hd_error("cluster.redis[%zu]: %s", i + 1, err);
            free(c->shards);
            c->shards = NULL;
            return HD_ECONFIG;
        }
        s->c = c;
        s->index = i;
        s->cmd.s = s->sub.s = s;
        const char *colon = strchr(s->url.host, ':') ? "[%s]" : "%s";
        char host[HD_REDIS_URL_MAX + 3];
        snprintf(host, sizeof host, colon, s->url.host);
        if (s->url.db) snprintf(s->shown, sizeof s->shown, "redis://%s:%d/%d", host, s->url.port, s->url.db);
        else snprintf(s->shown, sizeof s->shown, "redis://%s:%d", host, s->url.port);
    }
    hd_topic_observer o = topic_observer;
    o.ud = c;
    eng->pres.on_local = on_local;
    eng->pres.on_local_ud = c;
    eng->pres.qualify_keys = 1;
    /* Messages of topics with history go through Redis first (their offset). */
    eng->remote_append = remote_append;
    eng->remote_ud = c;
    eng->hist.off = 1;
    sha_hex(APPEND_LUA, c->append_sha);
    sha_hex(READ_LUA, c->read_sha);
    if (hd_publish_observe(eng, on_publish, c) || hd_engine_observe_topics(eng, &o)) {
        free(c->shards);
        c->shards = NULL;
        return HD_ELIMIT;
    }
    uv_timer_init(loop, &c->ticker);
    c->ticker.data = c;
    uv_idle_init(loop, &c->sync);
    c->sync.data = c;
    return 0;
}

void hd_cluster_start(hd_cluster *c)
{
    for (size_t i = 0; i < c->nshards; i++) connect_shard(&c->shards[i]);
    uv_timer_start(&c->ticker, on_tick, 100, 100);
}

void hd_cluster_withdraw(hd_cluster *c)
{
    hd_topics *t = &c->eng->topics;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext) {
            if (!presence_topic(c, tp)) continue;
            int mine = 0;
            for (hd_pres *e = tp->pres; e; e = e->next)
                if (e->sub) {
                    announce(c, tp, e, 0, 1);
                    mine = 1;
                }
            if (!mine) continue;
            size_t cl = 0;
            char *ch = channel_of(tp->name, tp->len, &cl);
            hd_str msg = HD_STR_INIT;
            hd_str_printf(&msg, "p1 %s\n!", c->node);
            const char *argv[3] = {"PUBLISH", ch, msg.p};
            size_t lens[3] = {7, cl, msg.len};
            if (ch && !msg.oom) command(shard_for(c, tp->name, tp->len), NULL, NULL, 3, argv, lens);
            free(ch);
            hd_str_free(&msg);
        }
    /* Not among the living any more: no peer waits for a timeout. */
    char key[320];
    int kl = snprintf(key, sizeof key, NODE_PREFIX "%s}:alive", c->node);
    const char *argv[2] = {"DEL", key};
    size_t lens[2] = {3, (size_t)kl};
    command(&c->shards[0], NULL, NULL, 2, argv, lens);
    /* Later changes (sockets still closing) are not announced, and no
     * heartbeat sets the key again while the drain finishes. */
    c->eng->pres.on_local = NULL;
    c->withdrawn = 1;
}

typedef struct numsub_req {
    void (*cb)(void *ud, long long n);
    void *ud;
} numsub_req;

static void on_numsub(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    numsub_req *q = privdata;
    redisReply *r = reply;
    long long n = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                          r->element[1]->type == REDIS_REPLY_INTEGER
                      ? r->element[1]->integer
                      : -1;
    q->cb(q->ud, n);
    free(q);
}

int hd_cluster_numsub(hd_cluster *c, const char *topic, size_t tlen,
                      void (*cb)(void *ud, long long n), void *ud)
{
    hd_shard *s = shard_for(c, topic, tlen);
    size_t cl;
    char *ch = s->linked && !c->closing ? channel_of(topic, tlen, &cl) : NULL;
    numsub_req *q = ch ? malloc(sizeof *q) : NULL;
    int rc = -1;
    if (q) {
        q->cb = cb;
        q->ud = ud;
        const char *argv[3] = {"PUBSUB", "NUMSUB", ch};
        size_t lens[3] = {6, 6, cl};
        if (redisAsyncCommandArgv(s->cmd.ac, on_numsub, q, 3, argv, lens) == REDIS_OK) {
            q = NULL;
            rc = 0;
        }
    }
    free(q);
    free(ch);
    return rc;
}

int hd_cluster_up(const hd_cluster *c)
{
    for (size_t i = 0; i < c->nshards; i++)
        if (!c->shards[i].up) return 0;
    return 1;
}

size_t hd_cluster_pending(const hd_cluster *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->nshards; i++) n += c->shards[i].queued + c->shards[i].inflight;
    return n;
}

void hd_cluster_close(hd_cluster *c, uv_close_cb cb, void *data)
{
    c->closing = 1;
    for (size_t i = 0; i < c->nshards; i++) {
        hd_shard *s = &c->shards[i];
        s->up = s->linked = 0;
        /* Joins still waiting for a read are told now (those of a read out
         * hear from hiredis as it lets go): each one's fn runs once. */
        fail_reads(s);
        let_go(s);
        drop_queue(s);
    }
    uv_timer_stop(&c->ticker);
    c->ticker.data = c->sync.data = data;
    uv_close((uv_handle_t *)&c->ticker, cb);
    uv_close((uv_handle_t *)&c->sync, cb);
}

void hd_cluster_free(hd_cluster *c)
{
    for (size_t i = 0; i < sizeof c->seen / sizeof *c->seen; i++) {
        free(c->seen[i]);
        c->seen[i] = NULL;
    }
    for (size_t i = 0; c->shards && i < c->nshards; i++) {
        hd_shard *s = &c->shards[i];
        set_clear(s);
        free(s->set);
        while (s->pending) {
            cname *n = s->pending;
            s->pending = n->next;
            free(n);
        }
        drop_queue(s);
    }
    while (c->reads) { /* (their joiners' connections are gone) */
        struct hread *r = c->reads;
        hwaiter *lists[2] = {r->out, r->wait};
        for (int i = 0; i < 2; i++)
            while (lists[i]) {
                hwaiter *w = lists[i];
                lists[i] = w->next;
                free(w);
            }
        r->out = r->wait = NULL;
        free_read(c, r);
    }
    free(c->shards);
    c->shards = NULL;
    c->nshards = 0;
}

static uint64_t oldest_ms(const hd_cluster *c)
{
    uint64_t now = uv_now(c->loop), oldest = 0;
    for (size_t i = 0; i < c->nshards; i++) {
        const qmsg *m = c->shards[i].qhead;
        if (m && now - m->at > oldest) oldest = now - m->at;
    }
    return oldest;
}

static size_t queued_of(const hd_cluster *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->nshards; i++) n += c->shards[i].queued;
    return n;
}

void hd_cluster_status_json(const hd_cluster *c, hd_str *out)
{
    hd_str_adds(out, "{\"node\":");
    hd_str_add_json(out, c->node, strlen(c->node));
    hd_str_adds(out, ",\"shards\":[");
    for (size_t i = 0; i < c->nshards; i++) {
        const hd_shard *s = &c->shards[i];
        if (i) hd_str_addc(out, ',');
        hd_str_adds(out, "{\"url\":");
        hd_str_add_json(out, s->shown, strlen(s->shown));
        hd_str_printf(out, ",\"up\":%s,\"reconnects\":%llu,\"topics\":%zu}", s->up ? "true" : "false",
                      (unsigned long long)s->reconnects, s->nset);
    }
    size_t queued = queued_of(c);
    hd_str_printf(out,
                  "],\"messages_out\":%llu,\"messages_in\":%llu,\"lost\":%llu,\"queued\":%zu,"
                  "\"oldest_queued_ms\":%llu}",
                  (unsigned long long)c->cs.out, (unsigned long long)c->cs.in,
                  (unsigned long long)c->cs.lost, queued, (unsigned long long)oldest_ms(c));
}

void hd_cluster_metrics(const hd_cluster *c, hd_str *o)
{
    hd_str_adds(o, "# HELP herald_cluster_link_up 1 while the link to a Redis shard is up.\n"
                   "# TYPE herald_cluster_link_up gauge\n");
    for (size_t i = 0; i < c->nshards; i++)
        hd_str_printf(o, "herald_cluster_link_up{shard=\"%zu\"} %d\n", i, c->shards[i].up);
    hd_str_printf(o,
                  "# HELP herald_cluster_reconnects_total Links to Redis that went down and "
                  "were set up again.\n# TYPE herald_cluster_reconnects_total counter\n"
                  "herald_cluster_reconnects_total %llu\n"
                  "# HELP herald_cluster_messages_total Cross-node messages: publishes sent to Redis (out: "
                  "PUBLISH, or the EVALSHA of a topic with history), messages delivered here from "
                  "Redis (in: other nodes', and this node's own of topics with history).\n"
                  "# TYPE herald_cluster_messages_total counter\n"
                  "herald_cluster_messages_total{direction=\"out\"} %llu\n"
                  "herald_cluster_messages_total{direction=\"in\"} %llu\n"
                  "# HELP herald_cluster_publishes_lost_total Cross-node publishes dropped: the "
                  "queue was full (cluster.queue_max) or the link broke with them in flight.\n"
                  "# TYPE herald_cluster_publishes_lost_total counter\n"
                  "herald_cluster_publishes_lost_total %llu\n"
                  "# HELP herald_cluster_queued Cross-node publishes waiting for a link.\n"
                  "# TYPE herald_cluster_queued gauge\nherald_cluster_queued %zu\n"
                  "# HELP herald_cluster_oldest_queued_seconds Age of the oldest cross-node "
                  "publish waiting for a link (0: none).\n"
                  "# TYPE herald_cluster_oldest_queued_seconds gauge\n"
                  "herald_cluster_oldest_queued_seconds %.3f\n"
                  "# HELP herald_cluster_bad_messages_total Messages on Herald's channels that "
                  "were not Herald's.\n# TYPE herald_cluster_bad_messages_total counter\n"
                  "herald_cluster_bad_messages_total %llu\n"
                  "# HELP herald_cluster_presence_stale_total This node's presence entries "
                  "found in Redis after it had dropped them (their leave was not stored while "
                  "the link was down): deleted and told to the peers then.\n"
                  "# TYPE herald_cluster_presence_stale_total counter\n"
                  "herald_cluster_presence_stale_total %llu\n"
                  "# HELP herald_cluster_presence_deferred_total Presence changes not sent while "
                  "cluster.queue_max commands were in flight (Redis falling behind): the node's "
                  "presence is sent again once half of them are answered.\n"
                  "# TYPE herald_cluster_presence_deferred_total counter\n"
                  "herald_cluster_presence_deferred_total %llu\n"
                  "# HELP herald_cluster_history_reads_total History reads sent to Redis for "
                  "joins of topics with history (one serves every join waiting).\n"
                  "# TYPE herald_cluster_history_reads_total counter\n"
                  "herald_cluster_history_reads_total %llu\n",
                  (unsigned long long)c->cs.reconnects, (unsigned long long)c->cs.out,
                  (unsigned long long)c->cs.in, (unsigned long long)c->cs.lost,
                  queued_of(c), (double)oldest_ms(c) / 1000.0, (unsigned long long)c->cs.bad,
                  (unsigned long long)c->cs.stale, (unsigned long long)c->cs.pres_deferred,
                  (unsigned long long)c->cs.history_reads);
}
