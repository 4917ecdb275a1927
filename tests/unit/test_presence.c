/* tests/unit/test_presence.c: presence entries (this node's and other
 * nodes'), the presence_state shape, and the batched presence_diff frames,
 * on a real loop (the batch timer) with connections that have no socket:
 * frames stay on their write queues (no writer runs), where the tests read
 * them.
 *
 * A diff is checked the way a client uses it: a model of phoenix.js's
 * Presence.syncDiff applies each diff to the state the client got, and
 * the result must be the server's state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "byhand.h"

#include "conn.h"
#include "err.h"
#include "presence.h"
#include "topic.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx {
    uv_loop_t loop;
    hd_config cfg;
    hd_stats st;
    hd_policy pol;
    hd_topics topics;
    hd_presence pr;
    hd_net net;
} fx;

/* ---- the engine, by hand -------------------------------------------------------- */

/* "room:*" sends presence events, "public:*" is not tracked, the rest is
 * tracked quietly (the defaults). */
static void resolve(void *ud, const char *name, size_t len, hd_topic_policy *p)
{
    (void)ud;
    if (len >= 5 && memcmp(name, "room:", 5) == 0) p->presence = 1;
    if (len >= 7 && memcmp(name, "public:", 7) == 0) p->tracked = 0;
}

static void on_topic_free(void *data, hd_topic *tp)
{
    hd_presence_forget(data, tp);
}

static void leave(fx *f, hd_sub *sub)
{
    hd_presence_untrack(&f->pr, sub);
    hd_topics_unsubscribe(&f->topics, sub);
}

/* A connection without a socket: its protocol only leaves its topics when
 * it closes. */
static void conn_closed(hd_conn *c)
{
    while (c->subs)
        leave(c->net->data, c->subs);
}
static const hd_conn_ops conn_ops = {.on_read = byhand_read, .close = byhand_shut, .on_closed = conn_closed, .free = byhand_free};

/* An open WebSocket connection on f's net (identity may be NULL). */
static hd_conn *conn_new(fx *f, const char *identity)
{
    hd_conn *c = ws_conn_by_hand(&f->net, &conn_ops);
    if (identity) assert_int_equal(hd_conn_set_identity(c, identity), 0);
    return c;
}

static hd_sub *join(fx *f, hd_conn *c, const char *topic, const char *meta)
{
    hd_sub *s = hd_topics_subscribe(&f->topics, topic, strlen(topic), c, "1");
    assert_non_null(s);
    assert_int_equal(hd_presence_track(&f->pr, s, meta), 0);
    return s;
}

static hd_topic *topic(fx *f, const char *name)
{
    return hd_topics_find(&f->topics, name, strlen(name));
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->cfg.max_connections = 1000;
    f->cfg.send_queue_bytes = 1 << 20;
    f->cfg.max_queued_bytes = 1 << 30;
    f->cfg.presence_batch_ms = 1;
    assert_int_equal(hd_policy_init(&f->pol, &f->cfg), 0);
    f->pol.resolve = resolve;
    assert_int_equal(hd_topics_init(&f->topics), 0);
    f->topics.pol = &f->pol;
    f->topics.st = &f->st;
    f->topics.on_free = on_topic_free;
    f->topics.on_free_data = &f->pr;
    hd_presence_init(&f->pr, &f->loop, &f->cfg, &f->st, &f->topics, "A");
    assert_int_equal(hd_net_init(&f->net, &f->loop, &f->cfg, &f->st), 0);
    f->net.data = f;
    *state = f;
    return 0;
}

/* Closing the connections leaves every topic (freeing them all); then the
 * handles close and the loop must have nothing left. */
static int teardown(void **state)
{
    fx *f = *state;
    hd_net_close_all(&f->net);
    hd_presence_close(&f->pr, NULL, NULL);
    hd_net_close_handles(&f->net, NULL, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->topics.count, 0);
    assert_int_equal(f->net.nconns, 0);
    hd_net_free(&f->net);
    hd_topics_free(&f->topics);
    assert_int_equal(f->pr.idx_n, 0); /* (every entry left the index) */
    hd_presence_free(&f->pr);
    hd_policy_free(&f->pol);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* ---- frames on a write queue ---------------------------------------------------- */

static size_t nframes(const hd_conn *c)
{
    size_t n = 0;
    for (const hd_wq_item *it = c->wq_head; it; it = it->next)
        n++;
    return n;
}

/* The [join_ref, ref, topic, event, payload] array in a server text frame. */
static json_t *frame_json(const hd_buf *b)
{
    assert_int_equal(b->data[0], 0x81);
    size_t hl = 2, n = b->data[1];
    if (n == 126) hl = 4, n = (size_t)b->data[2] << 8 | b->data[3];
    assert_int_equal(b->len, hl + n);
    json_t *a = json_loadb((const char *)b->data + hl, n, 0, NULL);
    assert_true(json_is_array(a) && json_array_size(a) == 5);
    return a;
}

/* The one frame queued on c, which must be event on topic: its payload
 * (the caller frees it); the queue is emptied. */
static json_t *take(hd_conn *c, const char *topic_name, const char *event)
{
    assert_int_equal(nframes(c), 1);
    json_t *a = frame_json(c->wq_head->buf);
    assert_string_equal(json_string_value(json_array_get(a, 2)), topic_name);
    assert_string_equal(json_string_value(json_array_get(a, 3)), event);
    json_t *payload = json_incref(json_array_get(a, 4));
    json_decref(a);
    hd_conn_drop_queue(c);
    assert_int_equal(nframes(c), 0);
    return payload;
}

/* ---- presence as JSON ----------------------------------------------------------- */

static json_t *state_of(fx *f, const char *name)
{
    hd_str s = HD_STR_INIT;
    hd_presence_state(&f->pr, name ? topic(f, name) : NULL, &s);
    assert_false(s.oom);
    json_error_t err;
    json_t *j = json_loadb(s.p, s.len, 0, &err);
    if (!j) fail_msg("state is not JSON: %s: %s", err.text, s.p);
    hd_str_free(&s);
    assert_true(json_is_object(j));
    return j;
}

/* The metas under key in a state or one side of a diff (NULL if none). */
static json_t *metas(json_t *side, const char *key)
{
    return json_object_get(json_object_get(side, key), "metas");
}

static const char *ref_of(json_t *meta)
{
    return json_string_value(json_object_get(meta, "phx_ref"));
}

/* The meta with phx_ref ref in a list of metas, or NULL. */
static json_t *meta_with_ref(json_t *metas_, const char *ref)
{
    size_t i;
    json_t *m;
    json_array_foreach(metas_, i, m) if (ref && ref_of(m) && strcmp(ref_of(m), ref) == 0) return m;
    return NULL;
}

static int has_ref(json_t *metas_, const char *ref)
{
    return meta_with_ref(metas_, ref) != NULL;
}

/* meta is the JSON text want. */
static int meta_is(json_t *meta, const char *want)
{
    json_t *w = json_loads(want, 0, NULL);
    int same = json_equal(meta, w);
    json_decref(w);
    return same;
}

/* The one meta under key; checks its size. */
static json_t *only_meta(json_t *side, const char *key)
{
    json_t *ms = metas(side, key);
    if (json_array_size(ms) != 1) fail_msg("key %s: %zu metas", key, json_array_size(ms));
    return json_array_get(ms, 0);
}

/* phoenix.js Presence.syncDiff: joins first (a join's metas replace the
 * ones with the same phx_ref and join the others), then leaves (metas go
 * by phx_ref; a key left with none goes). */
static void sync_diff(json_t *state, json_t *diff)
{
    const char *key;
    json_t *v, *m;
    size_t i;
    json_object_foreach(json_object_get(diff, "joins"), key, v)
    {
        json_t *joined = json_deep_copy(json_object_get(v, "metas"));
        json_t *all = json_array();
        json_array_foreach(metas(state, key), i, m) if (!has_ref(joined, ref_of(m)))
            json_array_append(all, m);
        json_array_extend(all, joined);
        json_decref(joined);
        json_object_set_new(state, key, json_pack("{s:o}", "metas", all));
    }
    json_object_foreach(json_object_get(diff, "leaves"), key, v)
    {
        json_t *cur = metas(state, key);
        if (!cur) continue;
        for (i = json_array_size(cur); i-- > 0;)
            if (has_ref(json_object_get(v, "metas"), ref_of(json_array_get(cur, i))))
                json_array_remove(cur, i);
        if (json_array_size(cur) == 0) json_object_del(state, key);
    }
}

/* The same keys, each with the same metas (in any order). */
static void assert_same_presence(json_t *client, json_t *server)
{
    char *cs = json_dumps(client, JSON_COMPACT), *ss = json_dumps(server, JSON_COMPACT);
    int same = json_object_size(client) == json_object_size(server);
    const char *key;
    json_t *v, *m;
    size_t i, j;
    json_object_foreach(server, key, v)
    {
        json_t *cm = metas(client, key), *sm = json_object_get(v, "metas");
        same = same && json_array_size(cm) == json_array_size(sm);
        json_array_foreach(sm, i, m)
        {
            int found = 0;
            json_t *n;
            json_array_foreach(cm, j, n) found |= json_equal(m, n);
            same = same && found;
        }
    }
    if (!same) fail_msg("the client sees %s\nthe server has %s", cs, ss);
    free(cs);
    free(ss);
}

/* A client watching a topic: the state it was sent at its join, kept up
 * to date with the diffs its connection receives. */
typedef struct watcher {
    hd_conn *conn;
    const char *topic;
    json_t *state;
    json_t *last; /* the last diff it received, or NULL */
} watcher;

static watcher watch(fx *f, const char *name)
{
    watcher w = {conn_new(f, "watcher"), name, NULL, NULL};
    hd_sub *s = join(f, w.conn, name, NULL);
    hd_presence_send_state(&f->pr, s);
    w.state = take(w.conn, name, "presence_state");
    return w;
}

/* Flushes now. Returns the diff w received (w holds it until the next
 * call), or NULL when none came; w's model of the state must then be the
 * server's. */
static json_t *flush(fx *f, watcher *w)
{
    json_decref(w->last);
    w->last = NULL;
    hd_presence_flush(&f->pr);
    if (nframes(w->conn)) {
        w->last = take(w->conn, w->topic, "presence_diff");
        assert_true(json_is_object(json_object_get(w->last, "joins")));
        assert_true(json_is_object(json_object_get(w->last, "leaves")));
        sync_diff(w->state, w->last);
    }
    json_t *server = state_of(f, w->topic);
    assert_same_presence(w->state, server);
    json_decref(server);
    return w->last;
}

static void unwatch(watcher *w)
{
    json_decref(w->state);
    json_decref(w->last);
}

/* ---- this node's entries ------------------------------------------------------- */

static void assert_fresh_meta(json_t *m)
{
    const char *ref = ref_of(m);
    assert_non_null(ref);
    assert_int_equal(strlen(ref), 16); /* 12 bytes, URL-safe base64 */
    assert_int_equal(
        strspn(ref, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 16);
    assert_true(json_integer_value(json_object_get(m, "online_at")) > 1600000000000);
    assert_null(json_object_get(m, "phx_ref_prev"));
}

/* key -> {"metas":[...]}: the identity as key (two tabs of one user are
 * one key), else the connection id; metas hold what the join added,
 * phx_ref and online_at. */
static void test_state_shape(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice"), *a2 = conn_new(f, "alice"), *c = conn_new(f, NULL);
    join(f, a, "room:1", "{\"name\":\"A\"}");
    join(f, a2, "room:1", "{\"name\":\"A2\",\"online_at\":7}");
    hd_sub *sc = join(f, c, "room:1", NULL);

    json_t *s = state_of(f, "room:1");
    char cid[32];
    snprintf(cid, sizeof cid, "%llu", (unsigned long long)c->id);
    assert_int_equal(json_object_size(s), 2);
    json_t *am = metas(s, "alice");
    assert_int_equal(json_array_size(am), 2);
    json_t *m0 = json_array_get(am, 0), *m1 = json_array_get(am, 1);
    if (strcmp(json_string_value(json_object_get(m0, "name")), "A") != 0) {
        json_t *t = m0;
        m0 = m1, m1 = t;
    }
    assert_string_equal(json_string_value(json_object_get(m0, "name")), "A");
    assert_int_equal(json_object_size(m0), 3);
    assert_fresh_meta(m0);
    assert_string_equal(json_string_value(json_object_get(m1, "name")), "A2");
    assert_int_equal(json_integer_value(json_object_get(m1, "online_at")), 7); /* kept */
    json_t *cm = only_meta(s, cid);
    assert_int_equal(json_object_size(cm), 2);
    assert_fresh_meta(cm);
    assert_string_not_equal(ref_of(m0), ref_of(m1));
    assert_string_not_equal(ref_of(m0), ref_of(cm));

    /* presence_state carries exactly that text, under the join_ref. */
    hd_str text = HD_STR_INIT;
    hd_presence_state(&f->pr, sc->topic, &text);
    hd_presence_send_state(&f->pr, sc);
    assert_int_equal(nframes(c), 1);
    const hd_buf *b = c->wq_head->buf;
    size_t hl = b->data[1] == 126 ? 4 : 2;
    hd_str want = HD_STR_INIT;
    hd_str_printf(&want, "[\"1\",null,\"room:1\",\"presence_state\",%s]", text.p);
    assert_int_equal(b->len - hl, want.len);
    assert_memory_equal(b->data + hl, want.p, want.len);
    hd_str_free(&want);
    hd_str_free(&text);
    json_decref(s);
}

/* A client cannot forge the server's fields: phx_ref is made here and
 * phx_ref_prev only by an update; a meta that is not an object is {}. */
static void test_meta_fields_are_the_servers(void **state)
{
    fx *f = *state;
    join(f, conn_new(f, "u1"), "room:1", "{\"phx_ref\":\"forged\",\"phx_ref_prev\":\"x\",\"k\":1}");
    join(f, conn_new(f, "u2"), "room:1", "[1,2]");
    join(f, conn_new(f, "u3"), "room:1", "{not json");
    json_t *s = state_of(f, "room:1");
    json_t *m = only_meta(s, "u1");
    assert_fresh_meta(m);
    assert_string_not_equal(ref_of(m), "forged");
    assert_int_equal(json_integer_value(json_object_get(m, "k")), 1);
    assert_int_equal(json_object_size(only_meta(s, "u2")), 2);
    assert_int_equal(json_object_size(only_meta(s, "u3")), 2);
    json_decref(s);
}

/* Untracked topics have no entries; tracked topics without presence
 * events have entries but never a diff. */
static void test_untracked_and_quiet_topics(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice");
    hd_sub *pub = join(f, a, "public:news", "{\"x\":1}");
    assert_null(pub->pres);
    assert_int_equal(hd_presence_update(&f->pr, pub, "{}"), HD_ELIMIT);
    json_t *s = state_of(f, "public:news");
    assert_int_equal(json_object_size(s), 0);
    json_decref(s);
    s = state_of(f, NULL);
    assert_int_equal(json_object_size(s), 0);
    json_decref(s);

    hd_sub *q = join(f, a, "quiet:1", "{\"x\":1}");
    join(f, conn_new(f, "bob"), "quiet:1", NULL);
    assert_int_equal(hd_presence_update(&f->pr, q, "{\"x\":2}"), 0);
    s = state_of(f, "quiet:1");
    assert_int_equal(json_object_size(s), 2);
    assert_int_equal(json_integer_value(json_object_get(only_meta(s, "alice"), "x")), 2);
    json_decref(s);
    leave(f, q);
    hd_presence_flush(&f->pr);
    assert_int_equal(f->st.presence_diffs, 0);
    for (hd_conn *c = f->net.conns; c; c = c->next)
        assert_int_equal(nframes(c), 0);
}

/* An update: a new phx_ref, phx_ref_prev the old one; the diff is a join
 * of the new meta and a leave of the old under the same key. */
static void test_update(void **state)
{
    fx *f = *state;
    watcher w = watch(f, "room:1");
    hd_sub *s = join(f, conn_new(f, "alice"), "room:1", "{\"v\":1}");
    flush(f, &w);
    json_t *st0 = state_of(f, "room:1");
    char *old = strdup(ref_of(only_meta(st0, "alice")));
    json_decref(st0);

    assert_int_equal(hd_presence_update(&f->pr, s, "{\"v\":2}"), 0);
    json_t *st1 = state_of(f, "room:1");
    json_t *m = only_meta(st1, "alice");
    assert_int_equal(json_integer_value(json_object_get(m, "v")), 2);
    assert_string_not_equal(ref_of(m), old);
    assert_string_equal(json_string_value(json_object_get(m, "phx_ref_prev")), old);

    json_t *d = flush(f, &w);
    assert_non_null(d);
    assert_true(json_equal(only_meta(json_object_get(d, "joins"), "alice"), m));
    assert_string_equal(ref_of(only_meta(json_object_get(d, "leaves"), "alice")), old);
    assert_int_equal(
        json_integer_value(json_object_get(only_meta(json_object_get(d, "leaves"), "alice"), "v")),
        1);
    json_decref(st1);
    free(old);
    unwatch(&w);
}

/* ---- other nodes' entries -------------------------------------------------------- */

static const char b1[] = "{\"phx_ref\":\"b1\",\"online_at\":5,\"dev\":\"phone\"}";
static const char b1_tablet[] = "{\"phx_ref\":\"b1\",\"online_at\":5,\"dev\":\"tablet\"}";

/* node's entry under key on room:1. */
static int add(fx *f, const char *node, const char *key, const char *meta)
{
    return hd_presence_add(&f->pr, topic(f, "room:1"), node, key, meta, NULL);
}

/* How many metas room:1 has under key. */
static size_t count_metas(fx *f, const char *key)
{
    json_t *s = state_of(f, "room:1");
    size_t n = json_array_size(metas(s, key));
    json_decref(s);
    return n;
}

/* A watcher on room:1, where alice is local and node B has the entry b1
 * under key; the joins are sent. */
static watcher room_with_remote(fx *f, const char *key)
{
    watcher w = watch(f, "room:1");
    join(f, conn_new(f, "alice"), "room:1", "{\"dev\":\"laptop\"}");
    assert_int_equal(add(f, "B", key, b1), 0);
    json_t *d = flush(f, &w);
    assert_true(meta_is(meta_with_ref(metas(json_object_get(d, "joins"), key), "b1"), b1));
    return w;
}

/* A user on two nodes is one key with metas from both; the same entry
 * again is no news; another node's entry under the key joins it too. */
static void test_remote_entry_shares_the_key(void **state)
{
    fx *f = *state;
    watcher w = room_with_remote(f, "alice");
    assert_int_equal(count_metas(f, "alice"), 2);
    json_t *s = state_of(f, "room:1");
    assert_int_equal(json_object_size(s), 2); /* alice and the watcher */
    assert_true(meta_is(meta_with_ref(metas(s, "alice"), "b1"), b1));
    json_decref(s);

    uint64_t diffs = f->st.presence_diffs;
    assert_int_equal(add(f, "B", "alice", b1), 0);
    assert_null(flush(f, &w));
    assert_int_equal(f->st.presence_diffs, diffs);
    assert_int_equal(count_metas(f, "alice"), 2);

    assert_int_equal(add(f, "C", "alice", "{\"phx_ref\":\"c1\"}"), 0);
    json_t *d = flush(f, &w);
    assert_true(meta_is(only_meta(json_object_get(d, "joins"), "alice"), "{\"phx_ref\":\"c1\"}"));
    assert_int_equal(count_metas(f, "alice"), 3);
    unwatch(&w);
}

/* A changed meta under the same (node, key, phx_ref) replaces the entry,
 * and a client that applies the diff shows the new meta. */
static void test_remote_meta_replaced(void **state)
{
    fx *f = *state;
    watcher w = room_with_remote(f, "alice");
    assert_int_equal(add(f, "B", "alice", b1_tablet), 0);
    json_t *s = state_of(f, "room:1");
    assert_int_equal(json_array_size(metas(s, "alice")), 2);
    assert_true(meta_is(meta_with_ref(metas(s, "alice"), "b1"), b1_tablet));
    json_decref(s);
    json_t *d = flush(f, &w); /* and the client agrees */
    assert_true(meta_is(only_meta(json_object_get(d, "joins"), "alice"), b1_tablet));
    assert_false(has_ref(metas(json_object_get(d, "leaves"), "alice"), "b1"));
    unwatch(&w);
}

/* A node's entry removed and added again within one batch window (its
 * liveness lapsed and came back): the client must still show it. */
static void test_remote_entry_back_in_one_window(void **state)
{
    fx *f = *state;
    watcher w = room_with_remote(f, "bob");
    assert_int_equal(hd_presence_withdraw_node(&f->pr, "B"), 1);
    assert_int_equal(add(f, "B", "bob", b1), 0);
    json_t *d = flush(f, &w);
    assert_true(meta_is(only_meta(json_object_get(d, "joins"), "bob"), b1));
    assert_null(metas(json_object_get(d, "leaves"), "bob"));
    assert_int_equal(count_metas(f, "bob"), 1);
    unwatch(&w);
}

/* Removal is by (node, key, phx_ref), exactly. */
static void test_remote_remove(void **state)
{
    fx *f = *state;
    watcher w = room_with_remote(f, "alice");
    hd_topic *tp = topic(f, "room:1");
    assert_int_equal(hd_presence_remove(&f->pr, tp, "C", "alice", "b1"), 0);
    assert_int_equal(hd_presence_remove(&f->pr, tp, "B", "bob", "b1"), 0);
    assert_int_equal(hd_presence_remove(&f->pr, tp, "B", "alice", "b2"), 0);
    assert_int_equal(hd_presence_remove(&f->pr, NULL, "B", "alice", "b1"), 0);
    assert_null(flush(f, &w));

    assert_int_equal(hd_presence_remove(&f->pr, tp, "B", "alice", "b1"), 1);
    assert_int_equal(hd_presence_remove(&f->pr, tp, "B", "alice", "b1"), 0);
    json_t *d = flush(f, &w);
    assert_true(meta_is(only_meta(json_object_get(d, "leaves"), "alice"), b1));
    assert_int_equal(json_object_size(json_object_get(d, "joins")), 0);
    assert_int_equal(count_metas(f, "alice"), 1); /* the local one stays */
    unwatch(&w);
}

/* Withdrawing a node removes its entries on every topic, records the
 * leaves, and leaves this node's and other nodes' entries alone. */
static void test_withdraw_node(void **state)
{
    fx *f = *state;
    watcher w1 = watch(f, "room:1"), w2 = watch(f, "room:2");
    hd_conn *a = conn_new(f, "alice");
    join(f, a, "room:1", NULL);
    join(f, a, "room:2", NULL);
    hd_topic *t1 = topic(f, "room:1"), *t2 = topic(f, "room:2");
    assert_int_equal(hd_presence_add(&f->pr, t1, "B", "alice", b1, NULL), 0);
    assert_int_equal(hd_presence_add(&f->pr, t1, "B", "bob", "{\"phx_ref\":\"b2\"}", NULL), 0);
    assert_int_equal(hd_presence_add(&f->pr, t2, "B", "carol", "{\"phx_ref\":\"b3\"}", NULL), 0);
    assert_int_equal(hd_presence_add(&f->pr, t1, "C", "dave", "{\"phx_ref\":\"c1\"}", NULL), 0);
    flush(f, &w1);
    flush(f, &w2);

    assert_int_equal(hd_presence_withdraw_node(&f->pr, "A"), 0); /* not for local entries */
    assert_int_equal(hd_presence_withdraw_node(&f->pr, "B"), 3);
    hd_presence_flush(&f->pr);
    json_t *d1 = take(w1.conn, "room:1", "presence_diff");
    json_t *d2 = take(w2.conn, "room:2", "presence_diff");
    json_t *l1 = json_object_get(d1, "leaves"), *l2 = json_object_get(d2, "leaves");
    assert_int_equal(json_object_size(l1), 2);
    assert_string_equal(ref_of(only_meta(l1, "alice")), "b1");
    assert_string_equal(ref_of(only_meta(l1, "bob")), "b2");
    assert_int_equal(json_object_size(l2), 1);
    assert_string_equal(ref_of(only_meta(l2, "carol")), "b3");
    sync_diff(w1.state, d1);
    sync_diff(w2.state, d2);
    json_t *s1 = state_of(f, "room:1"), *s2 = state_of(f, "room:2");
    assert_same_presence(w1.state, s1);
    assert_same_presence(w2.state, s2);
    assert_int_equal(json_object_size(s1), 3); /* watcher, alice (local), dave (C) */
    assert_int_equal(json_array_size(metas(s1, "alice")), 1);
    assert_false(has_ref(metas(s1, "alice"), "b1"));
    assert_string_equal(ref_of(only_meta(s1, "dave")), "c1");
    assert_int_equal(json_object_size(s2), 2);
    assert_null(metas(s2, "carol"));
    assert_int_equal(hd_presence_withdraw_node(&f->pr, "B"), 0);
    json_decref(s1);
    json_decref(s2);
    json_decref(d1);
    json_decref(d2);
    unwatch(&w1);
    unwatch(&w2);
}

/* Many entries of other nodes on two topics, the same phx_refs on both and
 * the same keys from two nodes (the index's key is topic, node and ref):
 * each removal finds exactly its entry, on its topic, and the index
 * empties with the entries. */
static void test_many_remote_entries(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice");
    join(f, a, "room:1", NULL);
    join(f, a, "room:2", NULL);
    hd_topic *t1 = topic(f, "room:1"), *t2 = topic(f, "room:2");
    enum { N = 600 };
    char key[32], meta[64], ref[16];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "u%d", i);
        snprintf(ref, sizeof ref, "r%d", i);
        snprintf(meta, sizeof meta, "{\"phx_ref\":\"%s\"}", ref);
        assert_int_equal(hd_presence_add(&f->pr, t1, "B", key, meta, ref), 0);
        assert_int_equal(hd_presence_add(&f->pr, t2, "B", key, meta, ref), 0);
        assert_int_equal(hd_presence_add(&f->pr, t1, "C", key, meta, ref), 0);
    }
    assert_int_equal(f->pr.idx_n, 3 * N);
    /* Again: known already, nothing new. */
    assert_int_equal(hd_presence_add(&f->pr, t1, "B", "u7", "{\"phx_ref\":\"r7\"}", NULL), 0);
    assert_int_equal(f->pr.idx_n, 3 * N);
    /* B's even users leave room:1 only. */
    for (int i = 0; i < N; i += 2) {
        snprintf(key, sizeof key, "u%d", i);
        snprintf(ref, sizeof ref, "r%d", i);
        assert_int_equal(hd_presence_remove(&f->pr, t1, "B", key, ref), 1);
        assert_int_equal(hd_presence_remove(&f->pr, t1, "B", key, ref), 0); /* once */
    }
    assert_int_equal(hd_presence_remove(&f->pr, t1, "B", "u1", "r2"), 0); /* another's ref */
    assert_int_equal(f->pr.idx_n, 3 * N - N / 2);
    json_t *s1 = state_of(f, "room:1"), *s2 = state_of(f, "room:2");
    assert_int_equal(json_object_size(s1), N + 1); /* every user (C's) and alice */
    assert_int_equal(json_array_size(metas(s1, "u0")), 1);
    assert_int_equal(json_array_size(metas(s1, "u1")), 2);
    assert_int_equal(json_array_size(metas(s2, "u0")), 1);
    json_decref(s1);
    json_decref(s2);
    /* B goes: only C's entries are left, on room:1. */
    assert_int_equal(hd_presence_withdraw_node(&f->pr, "B"), N / 2 + N);
    assert_int_equal(f->pr.idx_n, N);
    assert_int_equal(hd_presence_remove(&f->pr, t1, "C", "u599", "r599"), 1);
    assert_int_equal(f->pr.idx_n, N - 1);
}

/* Entries for topics not tracked here are refused, and so are metas
 * without a string phx_ref; nothing changes. */
static void test_add_refused(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice");
    join(f, a, "public:1", NULL);
    join(f, a, "room:1", NULL);
    hd_topic *tp = topic(f, "room:1");
    assert_int_equal(hd_presence_add(&f->pr, topic(f, "public:1"), "B", "bob", b1, NULL), HD_ELIMIT);
    assert_int_equal(hd_presence_add(&f->pr, NULL, "B", "bob", b1, NULL), HD_ELIMIT);
    static const char *bad[] = {"{\"online_at\":1}",
                                "{\"phx_ref\":7}",
                                "{\"phx_ref\":null}",
                                "[\"phx_ref\",\"b1\"]",
                                "\"b1\"",
                                "{\"phx_ref\":\"b1\"",
                                ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (hd_presence_add(&f->pr, tp, "B", "bob", bad[i], NULL) != HD_EJSON)
            fail_msg("meta %s: not refused as HD_EJSON", bad[i]);
    /* A meta whose phx_ref is not the one it was announced under. */
    assert_int_equal(hd_presence_add(&f->pr, tp, "B", "bob", b1, "b9"), HD_EJSON);
    json_t *s = state_of(f, "room:1");
    assert_int_equal(json_object_size(s), 1);
    assert_int_equal(json_array_size(metas(s, "alice")), 1);
    json_decref(s);
    hd_presence_flush(&f->pr);
    json_t *d = take(a, "room:1", "presence_diff"); /* only her own join */
    assert_int_equal(json_object_size(json_object_get(d, "joins")), 1);
    json_decref(d);
}

/* The last local subscriber leaving frees the topic: other nodes' entries
 * and the pending diff go with it (ASan: no leak), nothing is sent. */
static void test_forget_with_the_topic(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice");
    hd_sub *s = join(f, a, "room:1", NULL);
    hd_topic *tp = topic(f, "room:1");
    assert_int_equal(hd_presence_add(&f->pr, tp, "B", "bob", b1, NULL), 0);
    assert_int_equal(hd_presence_add(&f->pr, tp, "B", "carol", "{\"phx_ref\":\"b2\"}", NULL), 0);
    leave(f, s);
    assert_null(topic(f, "room:1"));
    hd_presence_flush(&f->pr);
    assert_int_equal(f->st.presence_diffs, 0);
    assert_int_equal(nframes(a), 0);
    assert_int_equal(hd_presence_withdraw_node(&f->pr, "B"), 0);
    /* A topic of that name again starts empty. */
    join(f, a, "room:1", NULL);
    json_t *st = state_of(f, "room:1");
    assert_int_equal(json_object_size(st), 1);
    assert_null(metas(st, "bob"));
    json_decref(st);
}

/* "The last subscriber leaving has nobody left to tell": no diff, also
 * not one recorded before it left. */
static void test_last_leaver_tells_nobody(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice"), *b = conn_new(f, "bob");
    hd_sub *sa = join(f, a, "room:1", NULL), *sb = join(f, b, "room:1", NULL);
    hd_presence_flush(&f->pr);
    assert_int_equal(f->st.presence_diffs, 1);
    hd_conn_drop_queue(a);
    hd_conn_drop_queue(b);

    leave(f, sb);                    /* a is still there: recorded */
    hd_presence_untrack(&f->pr, sa); /* the last one: not recorded */
    hd_presence_flush(&f->pr);
    json_t *d = take(a, "room:1", "presence_diff");
    assert_int_equal(json_object_size(json_object_get(d, "leaves")), 1);
    assert_non_null(metas(json_object_get(d, "leaves"), "bob"));
    json_decref(d);
    hd_topics_unsubscribe(&f->topics, sa);
    hd_presence_flush(&f->pr);
    assert_int_equal(f->st.presence_diffs, 2);

    /* A pending leave dies with the topic when the last one goes. */
    sa = join(f, a, "room:2", NULL);
    sb = join(f, b, "room:2", NULL);
    hd_presence_flush(&f->pr);
    hd_conn_drop_queue(a);
    hd_conn_drop_queue(b);
    leave(f, sb);
    leave(f, sa);
    hd_presence_flush(&f->pr);
    assert_int_equal(f->st.presence_diffs, 3);
    assert_int_equal(nframes(a) + nframes(b), 0);
}

/* ---- the batch window ------------------------------------------------------------ */

/* Runs the loop until the batch timer has sent n diffs in all (bounded:
 * a timer that never fires fails the test instead of hanging it). */
static void run_until_diffs(fx *f, uint64_t n)
{
    uint64_t end = uv_now(&f->loop) + 5000;
    while (f->st.presence_diffs < n) {
        if (uv_now(&f->loop) > end)
            fail_msg("the batch timer never sent diff %llu", (unsigned long long)n);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

/* Every join and leave of one window reaches the subscribers as ONE
 * presence_diff frame, built once and shared; connections that are
 * closing take none. */
static void test_batch_window(void **state)
{
    fx *f = *state;
    hd_conn *a = conn_new(f, "alice"), *b = conn_new(f, "bob"), *c = conn_new(f, "carol");
    join(f, a, "room:1", NULL);
    hd_sub *sb = join(f, b, "room:1", NULL);
    join(f, c, "room:1", NULL);
    assert_int_equal(nframes(a) + nframes(b) + nframes(c), 0); /* not before the window ends */
    run_until_diffs(f, 1);
    assert_int_equal(f->st.presence_diffs, 1);
    hd_buf *frame = a->wq_head->buf;
    assert_ptr_equal(b->wq_head->buf, frame);
    assert_ptr_equal(c->wq_head->buf, frame);
    assert_int_equal(frame->refs, 3);
    json_t *d = take(a, "room:1", "presence_diff");
    assert_int_equal(json_object_size(json_object_get(d, "joins")), 3);
    assert_int_equal(json_object_size(json_object_get(d, "leaves")), 0);
    for (const char *const *k = (const char *const[]){"alice", "bob", "carol", NULL}; *k; k++)
        assert_fresh_meta(only_meta(json_object_get(d, "joins"), *k));
    json_decref(d);
    hd_conn_drop_queue(b);
    hd_conn_drop_queue(c);

    /* The next window: a join, a leave, another node's entry; c is closing. */
    hd_conn *dv = conn_new(f, "dave");
    c->flags |= HD_CF_WS_CLOSE_SENT;
    join(f, dv, "room:1", NULL);
    leave(f, sb);
    assert_int_equal(hd_presence_add(&f->pr, topic(f, "room:1"), "B", "erin", b1, NULL), 0);
    run_until_diffs(f, 2);
    assert_int_equal(f->st.presence_diffs, 2);
    assert_ptr_equal(a->wq_head->buf, dv->wq_head->buf);
    assert_int_equal(a->wq_head->buf->refs, 2);
    assert_int_equal(nframes(b) + nframes(c), 0);
    d = take(dv, "room:1", "presence_diff");
    json_t *joins = json_object_get(d, "joins"), *leaves = json_object_get(d, "leaves");
    assert_int_equal(json_object_size(joins), 2);
    assert_fresh_meta(only_meta(joins, "dave"));
    assert_string_equal(ref_of(only_meta(joins, "erin")), "b1");
    assert_int_equal(json_object_size(leaves), 1);
    assert_fresh_meta(only_meta(leaves, "bob"));
    json_decref(d);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_state_shape),
        T(test_meta_fields_are_the_servers),
        T(test_untracked_and_quiet_topics),
        T(test_update),
        T(test_remote_entry_shares_the_key),
        T(test_remote_meta_replaced),
        T(test_remote_entry_back_in_one_window),
        T(test_remote_remove),
        T(test_withdraw_node),
        T(test_many_remote_entries),
        T(test_add_refused),
        T(test_forget_with_the_topic),
        T(test_last_leaver_tells_nobody),
        T(test_batch_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
