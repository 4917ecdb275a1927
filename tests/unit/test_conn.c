/* tests/unit/test_conn.c: the transport (core/conn.c).
 *
 * The indexes are tested on bare structs: conn.c is included here to reach
 * ids_put, ids_del, ids_grow and id_slot, and connections are calloc'd with
 * chosen ids (growth past 1024, deletion inside a probe run that wraps at
 * the end of the table, a randomized run against a reference array). The
 * send limits, drop_oldest, hd_conn_shut_now and the writer's promise
 * (bytes queued in any loop phase are written before the loop blocks in
 * poll) use the harness's real server and clients on one loop. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* The module itself, for its static functions (STYLE.md). This object then
 * defines every hd_conn_* and hd_net_* symbol, so the linker never pulls
 * conn.o from libherald_core.a. Its consume() would clash with the
 * harness's. */
#define consume conn_consume
#include "conn.c"
#undef consume

#include "presence.h"
#include "topic.h"
#include "ws.h"

#include "harness.h"

/* ---- the id index ------------------------------------------------------------------- */

static hd_net *bare_net(void)
{
    hd_net *net = calloc(1, sizeof *net);
    assert_non_null(net);
    return net;
}

/* Every indexed connection sits in the probe run that starts at its home
 * slot (no empty slot in between, so a lookup reaches it), and ids_count
 * counts the occupied slots. */
static void check_runs(const hd_net *net)
{
    size_t used = 0, mask = net->ids_cap - 1;
    for (size_t k = 0; k < net->ids_cap; k++) {
        if (!net->ids[k]) continue;
        used++;
        for (size_t j = id_slot(net, net->ids[k]->id); j != k; j = (j + 1) & mask)
            if (!net->ids[j])
                fail_msg("id %llu sits at slot %zu but slot %zu of its run is empty",
                         (unsigned long long)net->ids[k]->id, k, j);
    }
    assert_int_equal(used, net->ids_count);
}

/* hd_net_find finds exactly the connections of pool marked in in[]. */
static void check_found(hd_net *net, hd_conn *pool, const uint8_t *in, size_t n)
{
    size_t want = 0;
    for (size_t i = 0; i < n; i++) {
        hd_conn *got = hd_net_find(net, pool[i].id);
        if (got != (in[i] ? &pool[i] : NULL))
            fail_msg("id %llu (%s): hd_net_find returned %p, not %p", (unsigned long long)pool[i].id,
                     in[i] ? "indexed" : "deleted", (void *)got, in[i] ? (void *)&pool[i] : NULL);
        want += in[i];
    }
    assert_int_equal(net->ids_count, want);
    check_runs(net);
}

static void test_ids_grow(void **st)
{
    (void)st;
    enum { N = 3000 };
    hd_net *net = bare_net();
    hd_conn *pool = calloc(N, sizeof *pool);
    uint8_t *in = calloc(N, 1);
    assert_null(hd_net_find(net, 1)); /* no table yet */
    for (size_t i = 0; i < N; i++) {
        pool[i].id = i + 1; /* as accept numbers them */
        assert_int_equal(ids_put(net, &pool[i]), 0);
        in[i] = 1;
        /* At most half full: 512 fit in the first table, 513 do not. */
        if (i + 1 == 512) {
            assert_int_equal(net->ids_cap, 1024);
            check_found(net, pool, in, N);
        }
        if (i + 1 == 513) assert_int_equal(net->ids_cap, 2048);
    }
    assert_int_equal(net->ids_cap, 8192);
    check_found(net, pool, in, N);
    assert_null(hd_net_find(net, 0));
    assert_null(hd_net_find(net, N + 1));
    for (size_t i = 0; i < N; i += 3) {
        ids_del(net, &pool[i]);
        in[i] = 0;
    }
    check_found(net, pool, in, N);
    /* A connection that was never indexed (its accept failed): no change. */
    hd_conn *stray = calloc(1, sizeof *stray);
    stray->id = N + 7;
    ids_del(net, stray);
    check_found(net, pool, in, N);
    free(stray);
    /* A closed connection stays indexed until its close callback, but is
     * not found. */
    pool[1].flags |= HD_CF_CLOSED;
    assert_null(hd_net_find(net, pool[1].id));
    pool[1].flags = 0;
    hd_net_free(net);
    assert_null(net->ids);
    assert_int_equal(net->ids_cap + net->ids_count, 0);
    free(in);
    free(pool);
    free(net);
}

/* The next id from *from on whose home slot is slot. */
static uint64_t next_homed(const hd_net *net, size_t slot, uint64_t *from)
{
    for (uint64_t id = *from;; id++)
        if (id_slot(net, id) == slot) {
            *from = id + 1;
            return id;
        }
}

/* A run that starts two slots before the end and wraps: three ids homed
 * at 1022, two at 1023, two at 0 and one at 1 fill slots 1022..5. Each
 * entry is deleted first in turn, then the others in order; after every
 * deletion the rest is still found and the deleted ones are not. */
static void test_ids_delete_in_wrapping_run(void **st)
{
    (void)st;
    enum { N = 8 };
    static const size_t homes[N] = {1022, 1022, 1022, 1023, 1023, 0, 0, 1};
    static const size_t at[N] = {1022, 1023, 0, 1, 2, 3, 4, 5};
    hd_conn *pool = calloc(N, sizeof *pool);
    for (size_t first = 0; first < N; first++) {
        hd_net *net = bare_net();
        assert_int_equal(ids_grow(net), 0);
        assert_int_equal(net->ids_cap, 1024);
        uint64_t from = 1;
        uint8_t in[N];
        for (size_t i = 0; i < N; i++) {
            pool[i].id = next_homed(net, homes[i], &from);
            assert_int_equal(ids_put(net, &pool[i]), 0);
            in[i] = 1;
        }
        for (size_t i = 0; i < N; i++) assert_ptr_equal(net->ids[at[i]], &pool[i]);
        assert_null(net->ids[6]);
        assert_null(net->ids[1021]);
        ids_del(net, &pool[first]);
        in[first] = 0;
        check_found(net, pool, in, N);
        for (size_t i = 0; i < N; i++) {
            if (!in[i]) continue;
            ids_del(net, &pool[i]);
            in[i] = 0;
            check_found(net, pool, in, N);
        }
        for (size_t k = 0; k < net->ids_cap; k++) assert_null(net->ids[k]);
        hd_net_free(net);
        free(net);
    }
    free(pool);
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
    rng ^= rng << 13; /* xorshift64: the same sequence every run */
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Random inserts and deletes against a reference array. The pool mixes
 * sequential ids, random ones and 64 ids homed in the last 8 slots at every
 * table size from 1024 to 16384 (their runs wrap to slot 0). */
static void test_ids_random(void **st)
{
    (void)st;
    enum { SEQ = 2048, RND = 2048, TAIL = 64, N = SEQ + RND + TAIL, OPS = 100000 };
    hd_conn *pool = calloc(N, sizeof *pool);
    uint8_t *in = calloc(N, 1);
    for (size_t i = 0; i < SEQ; i++) pool[i].id = i + 1;
    for (size_t i = SEQ; i < SEQ + RND; i++) pool[i].id = rnd() | 1ULL << 63;
    hd_net *probe = bare_net();
    probe->ids_cap = 16384; /* id_slot only reads the capacity */
    uint64_t id = 1ULL << 40;
    for (size_t i = SEQ + RND; i < N; id++)
        if (id_slot(probe, id) >= 16384 - 8) pool[i++].id = id;
    free(probe);

    hd_net *net = bare_net();
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(ids_put(net, &pool[i]), 0);
        in[i] = 1;
    }
    assert_int_equal(net->ids_cap, 16384);
    check_found(net, pool, in, N);
    for (int op = 1; op <= OPS; op++) {
        size_t i = (size_t)(rnd() % N);
        if (in[i]) ids_del(net, &pool[i]);
        else assert_int_equal(ids_put(net, &pool[i]), 0);
        in[i] ^= 1;
        assert_ptr_equal(hd_net_find(net, pool[i].id), in[i] ? &pool[i] : NULL);
        if (op % 4096 == 0) check_found(net, pool, in, N);
    }
    check_found(net, pool, in, N);
    hd_net_free(net);
    free(net);
    free(in);
    free(pool);
}

/* ---- the identity index ----------------------------------------------------------- */

/* Sets pool[i]'s identity and records it in ref[] (the test's own account). */
static void set_ident(hd_conn *pool, const char **ref, size_t i, const char *id)
{
    assert_int_equal(hd_conn_set_identity(&pool[i], id), 0);
    ref[i] = id;
    if (id) assert_string_equal(hd_conn_identity(&pool[i]), id);
    else assert_null(hd_conn_identity(&pool[i]));
}

/* Iterating hd_net_find_ident yields each open connection of pool whose
 * recorded identity is id, once, and nothing else. */
static void expect_ident(hd_net *net, const char *id, hd_conn *pool, const char **ref, size_t n)
{
    uint8_t *seen = calloc(n, 1);
    size_t want = 0, got = 0;
    for (size_t i = 0; i < n; i++)
        if (ref[i] && strcmp(ref[i], id) == 0 && !(pool[i].flags & HD_CF_CLOSED)) want++;
    for (hd_conn *c = hd_net_find_ident(net, id, NULL); c; c = hd_net_find_ident(net, id, c)) {
        if (c < pool || c >= pool + n) fail_msg("%s: a connection not in the pool", id);
        size_t i = (size_t)(c - pool);
        if (!ref[i] || strcmp(ref[i], id) != 0 || (c->flags & HD_CF_CLOSED) || seen[i])
            fail_msg("%s: connection %zu (identity %s%s%s) should not be found here", id, i,
                     ref[i] ? ref[i] : "none", c->flags & HD_CF_CLOSED ? ", closed" : "",
                     seen[i] ? ", again" : "");
        seen[i] = 1;
        got++;
    }
    assert_int_equal(got, want);
    free(seen);
}

static void test_identity_index(void **st)
{
    (void)st;
    enum { N = 1000, NAMES = 300 };
    static char names[NAMES][16];
    for (int k = 0; k < NAMES; k++) snprintf(names[k], sizeof names[k], "u%d", k);
    hd_net *net = bare_net();
    hd_conn *pool = calloc(N, sizeof *pool);
    const char **ref = calloc(N, sizeof *ref);
    for (size_t i = 0; i < N; i++) {
        pool[i].net = net;
        pool[i].id = i + 1;
    }
    assert_null(hd_net_find_ident(net, "user:1", NULL)); /* no table yet */

    /* One user on three connections, another on one. */
    set_ident(pool, ref, 0, "user:1");
    set_ident(pool, ref, 1, "user:1");
    set_ident(pool, ref, 2, "user:1");
    set_ident(pool, ref, 3, "user:2");
    expect_ident(net, "user:1", pool, ref, N);
    expect_ident(net, "user:2", pool, ref, N);
    expect_ident(net, "nobody", pool, ref, N);
    assert_int_equal(net->idents_count, 4);
    /* Replaced: the old identity no longer finds it. */
    set_ident(pool, ref, 1, "user:2");
    expect_ident(net, "user:1", pool, ref, N);
    expect_ident(net, "user:2", pool, ref, N);
    assert_int_equal(net->idents_count, 4);
    /* Set again to the same: still one entry. */
    set_ident(pool, ref, 1, "user:2");
    assert_int_equal(net->idents_count, 4);
    /* Cleared. */
    set_ident(pool, ref, 0, NULL);
    expect_ident(net, "user:1", pool, ref, N);
    assert_int_equal(net->idents_count, 3);
    /* A closed connection is skipped until its close callback unindexes it. */
    pool[2].flags |= HD_CF_CLOSED;
    assert_null(hd_net_find_ident(net, "user:1", NULL));
    pool[2].flags = 0;
    expect_ident(net, "user:1", pool, ref, N);

    /* Growth past the first 256 buckets, with many identities sharing
     * buckets: every iteration still yields exactly its own. */
    size_t cap0 = net->idents_cap;
    for (size_t i = 4; i < N; i++) set_ident(pool, ref, i, names[i % NAMES]);
    assert_true(net->idents_cap > cap0);
    assert_int_equal(net->idents_count, N - 1);
    for (int k = 0; k < NAMES; k++) expect_ident(net, names[k], pool, ref, N);
    expect_ident(net, "user:1", pool, ref, N);
    expect_ident(net, "user:2", pool, ref, N);
    /* Half the connections move to another identity, then all clear. */
    for (size_t i = 4; i < N; i += 2) set_ident(pool, ref, i, names[(i + 1) % NAMES]);
    for (int k = 0; k < NAMES; k++) expect_ident(net, names[k], pool, ref, N);
    for (size_t i = 0; i < N; i++) set_ident(pool, ref, i, NULL);
    assert_int_equal(net->idents_count, 0);
    for (int k = 0; k < NAMES; k++) assert_null(hd_net_find_ident(net, names[k], NULL));
    hd_net_free(net);
    free(ref);
    free(pool);
    free(net);
}

/* ---- send limits, drop_oldest, shut_now (a real server) ------------------------------- */

/* The server's side of the newest client. */
static hd_conn *newest(hd_conn_kind kind)
{
    RUN_UNTIL(srv.net.conns && srv.net.conns->kind == kind);
    return srv.net.conns;
}

/* A text payload of n copies of ch (NUL-terminated; caller frees). */
static char *filled(char ch, size_t n)
{
    char *p = malloc(n + 1);
    memset(p, ch, n);
    p[n] = 0;
    return p;
}

/* A server text frame with a payload of n copies of ch. */
static hd_buf *text_frame(char ch, size_t n)
{
    char *p = filled(ch, n);
    hd_buf *b = hd_ws_frame(HD_WS_TEXT, p, n);
    free(p);
    assert_non_null(b);
    return b;
}

static void expect_filled(cli *c, char ch, size_t n)
{
    char *p = filled(ch, n);
    expect_frame(c, 1, p, n);
    free(p);
}

static void expect_close(cli *c, uint16_t code, const char *reason)
{
    char p[128];
    size_t n = strlen(reason);
    p[0] = (char)(code >> 8);
    p[1] = (char)(code & 0xFF);
    memcpy(p + 2, reason, n);
    expect_frame(c, 8, p, 2 + n);
}

/* The client completes the close handshake; the server ends TCP. */
static void ws_bye(cli *c, uint16_t code)
{
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    ws_send(c, 8, p, 2);
    RUN_UNTIL(c->eof);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

static const char small_queue_config[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "limits = { send_queue_bytes = 1024 }\n"
    "log = { level = 'warn' }\n";

static int setup_small_queue(void **st)
{
    (void)st;
    return setup_with(small_queue_config);
}

/* Over limits.send_queue_bytes a WebSocket is marked, not closed on the
 * spot (a fan-out may be walking a subscriber list); the writer drops what
 * it had queued and closes it with 1013. HTTP answers have no such limit. */
static void test_send_limit_closes_1013(void **st)
{
    (void)st;
    cli *ws = ws_client();
    hd_conn *c = newest(HD_CONN_WS);
    hd_buf *f = text_frame('a', 396);
    assert_int_equal(f->len, 400);
    assert_int_equal(hd_conn_send(c, f), 0);
    assert_int_equal(hd_conn_send(c, f), 0);
    assert_int_equal(c->wq_bytes, 800);
    assert_int_equal(hd_conn_send(c, f), HD_EFULL); /* 1200 > 1024 */
    assert_true(c->flags & HD_CF_REAP);
    assert_ptr_equal(srv.net.reap, c);
    assert_false(c->flags & HD_CF_CLOSED);
    assert_false(hd_conn_open(c));
    assert_int_equal(c->wq_bytes, 800);
    assert_int_equal(srv.st.dropped_slow, 1);
    /* Marked: what comes later is refused and counted too. */
    assert_int_equal(hd_conn_send(c, f), HD_ECLOSED);
    assert_int_equal(srv.st.dropped_slow, 2);
    hd_buf_unref(f);
    /* The first frame the client sees is the close: the two queued ones
     * were dropped (and counted) before it. */
    expect_close(ws, 1013, "slow consumer");
    assert_null(srv.net.reap);
    assert_int_equal(srv.st.dropped_slow, 4);
    assert_int_equal(srv.st.slow_closes, 1);
    assert_int_equal(srv.st.ws_closes_sent[13], 1);
    ws_bye(ws, 1013);

    cli *h = cli_new();
    hd_conn *hc = newest(HD_CONN_HTTP);
    char *bytes = filled('h', 2000);
    hd_buf *big = hd_buf_copy(bytes, 2000);
    assert_int_equal(hd_conn_send(hc, big), 0);
    hd_buf_unref(big);
    RUN_UNTIL(h->in.len == 2000);
    assert_memory_equal(h->in.p, bytes, 2000);
    free(bytes);
    assert_int_equal(srv.st.slow_closes, 1);
    cli_free(h);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* drop_oldest makes room by dropping the oldest queued frames of the same
 * topic only; with nothing of that topic to drop the new frame goes
 * (counted) and the connection stays open. */
static void test_drop_oldest_same_topic(void **st)
{
    (void)st;
    enum { LIMIT = 1000 };
    cli *ws = ws_client();
    hd_conn *c = newest(HD_CONN_WS);
    hd_buf *a1 = text_frame('a', 296), *a2 = text_frame('b', 296), *a3 = text_frame('c', 296);
    hd_buf *b1 = text_frame('x', 296), *b2 = text_frame('y', 296), *c1 = text_frame('z', 296);
    assert_int_equal(a1->len, 300);
    assert_int_equal(hd_conn_send_topic(c, a1, 1, LIMIT, 1), 0);
    assert_int_equal(hd_conn_send_topic(c, b1, 2, LIMIT, 1), 0);
    assert_int_equal(hd_conn_send_topic(c, a2, 1, LIMIT, 1), 0);
    assert_int_equal(c->wq_bytes, 900);
    assert_int_equal(hd_conn_send_topic(c, a3, 1, LIMIT, 1), 0); /* a1 goes, not b1 */
    assert_int_equal(srv.st.dropped_oldest, 1);
    assert_int_equal(hd_conn_send_topic(c, b2, 2, LIMIT, 1), 0); /* b1 goes, not a2 */
    assert_int_equal(srv.st.dropped_oldest, 2);
    assert_int_equal(hd_conn_send_topic(c, c1, 3, LIMIT, 1), HD_EFULL);
    assert_int_equal(srv.st.dropped_oldest, 3);
    assert_int_equal(c->wq_bytes, 900);
    assert_true(hd_conn_open(c));
    assert_false(c->flags & HD_CF_REAP);
    hd_buf *end = text_frame('e', 3);
    assert_int_equal(hd_conn_send(c, end), 0);
    expect_filled(ws, 'b', 296);
    expect_filled(ws, 'c', 296);
    expect_filled(ws, 'y', 296);
    expect_filled(ws, 'e', 3);
    assert_int_equal(srv.st.dropped_slow, 0);
    hd_buf *all[] = {a1, a2, a3, b1, b2, c1, end};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) hd_buf_unref(all[i]);
    ws_bye(ws, 1000);
}

enum { BIG = 16 << 20 };

/* Leaves a big frame (BIG bytes of 'B', topic 1) on c's queue with libuv
 * writing it: the client stops reading and the server's socket buffer is
 * small, so it is partly written and the rest handed to uv_write. Returns
 * the frame (the caller's reference). */
static hd_buf *stick(cli *ws, hd_conn *c)
{
    uv_read_stop((uv_stream_t *)&ws->tcp);
    int sz = 4096;
    assert_int_equal(uv_send_buffer_size((uv_handle_t *)&c->tcp, &sz), 0);
    hd_buf *big = text_frame('B', BIG);
    assert_int_equal(hd_conn_send_topic(c, big, 1, big->len, 1), 0);
    RUN_UNTIL((c->flags & HD_CF_WRITING) || !c->wq_head);
    if (!(c->flags & HD_CF_WRITING)) fail_msg("the kernel took all %u bytes: nothing in flight", big->len);
    assert_true(c->wq_bytes > 0 && c->wq_bytes <= big->len);
    assert_int_equal(c->inflight, c->wq_bytes); /* what is left of it, all in flight */
    assert_ptr_equal(c->wq_head, c->wq_tail);
    return big;
}

/* The client reads again, at full speed (well within the close deadline):
 * the big frame arrives whole. */
static void unstick(cli *ws, hd_conn *c)
{
    int sz = 1 << 22;
    assert_int_equal(uv_send_buffer_size((uv_handle_t *)&c->tcp, &sz), 0);
    uv_read_start((uv_stream_t *)&ws->tcp, cli_alloc, cli_read);
    expect_filled(ws, 'B', BIG);
}

/* A frame libuv is writing is never dropped, neither by drop_oldest (even
 * when it is the topic's oldest) nor by hd_conn_shut_now: the client gets
 * it whole, then the close frame. */
static void test_frame_being_written_is_kept(void **st)
{
    (void)st;
    cli *ws = ws_client();
    hd_conn *c = newest(HD_CONN_WS);
    hd_buf *big = stick(ws, c);
    size_t r = c->wq_bytes;

    hd_buf *s1 = text_frame('1', 96), *s2 = text_frame('2', 96), *s3 = text_frame('3', 96),
           *s4 = text_frame('4', 96);
    size_t l = s1->len;
    assert_int_equal(hd_conn_send_topic(c, s1, 1, r + l, 1), 0);
    assert_int_equal(hd_conn_send_topic(c, s2, 1, r + l, 1), 0); /* s1 goes, big stays */
    assert_int_equal(srv.st.dropped_oldest, 1);
    assert_ptr_equal(c->wq_head->buf, big);
    assert_ptr_equal(c->wq_head->next, c->wq_tail);
    assert_ptr_equal(c->wq_tail->buf, s2);
    /* No room even after dropping s2: s3 goes alone (dropping s2 would
     * lose it for nothing); big is still there. */
    assert_int_equal(hd_conn_send_topic(c, s3, 1, r, 1), HD_EFULL);
    assert_int_equal(srv.st.dropped_oldest, 2);
    assert_int_equal(c->wq_bytes, r + l);
    assert_ptr_equal(c->wq_head->buf, big);
    assert_ptr_equal(c->wq_tail->buf, s2);
    assert_true(hd_conn_open(c));
    /* Room once s2 goes: s4 takes its place, linked after big (the tail
     * was found again). */
    assert_int_equal(hd_conn_send_topic(c, s4, 1, r + l, 1), 0);
    assert_int_equal(srv.st.dropped_oldest, 3);
    assert_ptr_equal(c->wq_head->next, c->wq_tail);
    assert_ptr_equal(c->wq_tail->buf, s4);

    hd_conn_shut_now(c, 1013, "slow consumer"); /* drops s4, keeps big */
    assert_int_equal(srv.st.dropped_slow, 1);
    assert_ptr_equal(c->wq_head->buf, big);
    assert_int_equal(c->wq_bytes, r + 2 + 2 + strlen("slow consumer"));
    unstick(ws, c);
    expect_close(ws, 1013, "slow consumer");
    hd_buf *all[] = {big, s1, s2, s3, s4};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) hd_buf_unref(all[i]);
    ws_bye(ws, 1013);
}

/* hd_conn_shut_now drops the queue (counted as dropped_slow) before the
 * close frame; a second call does nothing; a closing connection takes no
 * more frames. */
static void test_shut_now_drops_queue(void **st)
{
    (void)st;
    cli *ws = ws_client();
    hd_conn *c = newest(HD_CONN_WS);
    hd_buf *f = text_frame('q', 50);
    for (int i = 0; i < 3; i++) assert_int_equal(hd_conn_send(c, f), 0);
    hd_conn_shut_now(c, 1008, "policy violation");
    assert_int_equal(srv.st.dropped_slow, 3);
    size_t close_len = 2 + 2 + strlen("policy violation");
    assert_ptr_equal(c->wq_head, c->wq_tail); /* the close frame alone */
    assert_int_equal(c->wq_bytes, close_len);
    hd_conn_shut_now(c, 1011, "again");
    assert_int_equal(srv.st.dropped_slow, 3);
    assert_int_equal(c->wq_bytes, close_len);
    assert_int_equal(hd_conn_send(c, f), HD_ECLOSED);
    assert_int_equal(c->wq_bytes, close_len);
    hd_buf_unref(f);
    expect_close(ws, 1008, "policy violation");
    assert_int_equal(srv.st.ws_closes_sent[8], 1);
    assert_int_equal(srv.st.ws_closes_sent[11], 0);
    ws_bye(ws, 1008);
}

/* ---- the writer runs before the loop blocks ------------------------------------------- */

/* Bytes queued from a timer (presence batch, shaper window, Lua timer,
 * drain step) must be written before the loop next blocks in poll, and a
 * connection marked for reaping must be reaped. The invariant, checked
 * with the harness's 5 ms ticker stopped so that the loop really would
 * block: whenever a connection is pending or marked, poll's timeout is 0. A prepare handle checks it just before every poll (a
 * timer that fired at the top of a turn); RUN_CHECKED checks it after
 * every uv_run (libuv 1.44 runs due timers again at the end of a
 * UV_RUN_ONCE turn, after the check phase where the writer runs). */
static uv_prepare_t guard;
static uv_timer_t sentinel; /* poll never blocks for ever */
static int guard_seen;      /* times bytes were seen waiting */
static int guard_bad;       /* times poll would have blocked with them */
static char guard_msg[256];

static void check_no_block(const char *where)
{
    if (!srv.net.pend_head && !srv.net.reap) return;
    guard_seen++;
    int t = uv_backend_timeout(&loop);
    if (t != 0 && guard_bad++ == 0)
        snprintf(guard_msg, sizeof guard_msg, "%s: connection %llu %s, but poll would block for %d ms",
                 where, (unsigned long long)(srv.net.pend_head ? srv.net.pend_head->id : srv.net.reap->id),
                 srv.net.pend_head ? "has bytes queued" : "is marked for reaping", t);
}

static void on_guard(uv_prepare_t *p)
{
    (void)p;
    check_no_block("before poll");
}

#define RUN_CHECKED(cond)                                                                    \
    do {                                                                                     \
        uint64_t end_ = uv_now(&loop) + 5000;                                                \
        for (int turns_ = 0; !(cond); turns_++) {                                            \
            if (uv_now(&loop) > end_ || turns_ > 100000)                                     \
                fail_msg("%s:%d: timed out waiting for %s", __FILE__, __LINE__, #cond);      \
            uv_run(&loop, UV_RUN_ONCE);                                                      \
            check_no_block("after uv_run");                                                  \
        }                                                                                    \
    } while (0)

static int frame_ready(const cli *c)
{
    int op;
    size_t pl, pn;
    return frame_len(c, &op, &pl, &pn) > 0;
}

/* Counts afresh: call it before what starts the timer. */
static void guard_arm(void) { guard_seen = guard_bad = 0; }

/* The invariant held, and was checked at least at_least times while the
 * timer's work waited (the test was not vacuous). */
static void guard_check(int at_least)
{
    if (guard_bad) fail_msg("%s (%d time(s))", guard_msg, guard_bad);
    assert_true(guard_seen >= at_least);
}

/* Waits (checked) for the next frame that a timer queues for c. */
static void wait_timer_frame(cli *c)
{
    RUN_CHECKED(frame_ready(c));
    guard_check(1);
}

/* A repeating timer: a one-shot one closes its handle after firing, and a
 * closing handle alone makes poll's timeout 0, which would hide the bug. */
static const char timers_script[] =
    "local M = {}\n"
    "function M.join(socket, topic)\n"
    "  if topic == 'lua:t' then\n"
    "    local n = 0\n"
    "    herald.every(50, function() n = n + 1; herald.publish('lua:t', 'tick', { n = n }) end)\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "function M.message(socket, topic, event)\n"
    "  if event == 'go' then herald.every(10, function() herald.publish(topic, 'tick', {}) end) end\n"
    "end\n"
    "return M\n";

static int setup_timers(void **st)
{
    (void)st;
    setup_with_script("listen = { host = '127.0.0.1', port = 0 }\n"
                      "log = { level = 'warn' }\n"
                      "limits = { send_queue_bytes = 65536 }\n"
                      "presence = { batch_ms = 100 }\n"
                      "topics = { { match = 'room:*', presence = true },\n"
                      "           { match = 'slow:*', throttle_ms = 200 } }\n",
                      timers_script);
    uv_timer_stop(&ticker);
    uv_prepare_init(&loop, &guard);
    uv_prepare_start(&guard, on_guard);
    uv_timer_init(&loop, &sentinel);
    uv_timer_start(&sentinel, on_tick, 60000, 60000);
    guard_arm();
    return 0;
}

static void raws_close(void);

static int teardown_timers(void **st)
{
    raws_close(); /* a failed test_writer_slices_keep_spinning leaves them */
    uv_close((uv_handle_t *)&guard, NULL);
    uv_close((uv_handle_t *)&sentinel, NULL);
    return teardown(st);
}

/* The presence_diff that entry e's join makes on topic. */
static char *join_diff(const char *topic, const hd_pres *e)
{
    hd_str s = HD_STR_INIT;
    hd_str_printf(&s, "[null,null,\"%s\",\"presence_diff\",{\"joins\":{\"%s\":{\"metas\":[%s]}},"
                      "\"leaves\":{}}]", topic, e->text, e->text + e->meta_off);
    return s.p;
}

static void expect_key(const hd_pres *e, uint64_t conn_id)
{
    char key[32];
    snprintf(key, sizeof key, "%llu", (unsigned long long)conn_id);
    assert_string_equal(e->text, key); /* no identity: the connection id */
}

/* (a) presence.batch_ms: the batch timer sends the diffs. */
static void test_presence_diff_written_before_poll(void **st)
{
    (void)st;
    cli *a = ws_client();
    uint64_t a_id = newest(HD_CONN_WS)->id;
    guard_arm();
    join(a, "1", "room:p");
    hd_topic *tp = hd_topics_find(&srv.eng.topics, "room:p", 6);
    assert_non_null(tp);
    const hd_pres *ea = tp->pres;
    expect_key(ea, a_id);
    char want[512];
    snprintf(want, sizeof want, "[\"1\",null,\"room:p\",\"presence_state\",{\"%s\":{\"metas\":[%s]}}]",
             ea->text, ea->text + ea->meta_off);
    expect_text(a, want);
    char *d = join_diff("room:p", ea); /* a's own join, to a */
    wait_timer_frame(a);
    expect_text(a, d);
    free(d);

    cli *b = ws_client();
    uint64_t b_id = newest(HD_CONN_WS)->id;
    guard_arm();
    join(b, "2", "room:p");
    int op;
    char *state = next_frame(b, &op);
    assert_memory_equal(state, "[\"2\",null,\"room:p\",\"presence_state\",{", 36);
    free(state);
    const hd_pres *eb = tp->pres; /* newest first */
    expect_key(eb, b_id);
    d = join_diff("room:p", eb);
    wait_timer_frame(a);
    expect_text(a, d);
    expect_text(b, d);
    free(d);
    assert_int_equal(srv.st.presence_diffs, 2);
    cli_free(a);
    cli_free(b);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* (b) throttle_ms: the shaper's window timer releases what it held. */
static void test_throttle_release_written_before_poll(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "slow:x");
    cli *h = cli_new();
    const char *batch = "[{\"channel\":\"slow:x\",\"event\":\"e\",\"data\":1},"
                        "{\"channel\":\"slow:x\",\"event\":\"e\",\"data\":2},"
                        "{\"channel\":\"slow:x\",\"event\":\"e\",\"data\":3}]";
    char req[512];
    snprintf(req, sizeof req, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(batch), batch);
    guard_arm();
    cli_sends(h, req);
    expect_response(h, 200, "OK", "keep-alive", "",
                    "[{\"channel\":[\"slow:x\"],\"data\":1,\"event\":\"e\"},"
                    "{\"channel\":[\"slow:x\"],\"data\":2,\"event\":\"e\"},"
                    "{\"channel\":[\"slow:x\"],\"data\":3,\"event\":\"e\"}]");
    /* The first opens the window and goes at once; the others wait for
     * its end. */
    expect_text(ws, "[null,null,\"slow:x\",\"msg\",{\"data\":1,\"event\":\"e\"}]");
    assert_int_equal(srv.st.shaped_released, 1);
    wait_timer_frame(ws);
    expect_text(ws, "[null,null,\"slow:x\",\"msg\",{\"data\":2,\"event\":\"e\"}]");
    expect_text(ws, "[null,null,\"slow:x\",\"msg\",{\"data\":3,\"event\":\"e\"}]");
    assert_int_equal(srv.st.shaped_released, 3);
    cli_free(h);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* (c) a Lua timer (herald.every, started by the join hook) publishes. */
static void test_lua_timer_publish_written_before_poll(void **st)
{
    (void)st;
    cli *ws = ws_client();
    guard_arm();
    join(ws, "1", "lua:t");
    wait_timer_frame(ws);
    expect_text(ws, "[null,null,\"lua:t\",\"msg\",{\"data\":{\"n\":1},\"event\":\"tick\"}]");
    guard_arm();
    wait_timer_frame(ws);
    expect_text(ws, "[null,null,\"lua:t\",\"msg\",{\"data\":{\"n\":2},\"event\":\"tick\"}]");
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* (d) a drain step queues the 1012 close frame. */
static void test_drain_close_written_before_poll(void **st)
{
    (void)st;
    cli *ws = ws_client();
    guard_arm();
    hd_server_drain(&srv, "test");
    wait_timer_frame(ws);
    expect_close(ws, 1012, "server restart");
    uint8_t p[2] = {0x03, 0xF4};
    ws_send(ws, 8, p, 2);
    RUN_CHECKED(ws->eof);
    cli_free(ws);
    RUN_CHECKED(stopped == 1);
    guard_check(1);
}

/* (e) a Lua timer's publish overflows a subscriber's queue: the connection
 * is marked for reaping in the timers phase (nothing is pending: its frame
 * was refused), and the writer closes it with 1013 before the loop blocks. */
static void test_reap_marked_in_timer_before_poll(void **st)
{
    (void)st;
    cli *ws = ws_client();
    hd_conn *c = newest(HD_CONN_WS);
    join(ws, "1", "lua:r");
    hd_buf *big = stick(ws, c);
    if (c->wq_bytes < cfg.send_queue_bytes) fail_msg("only %zu bytes left queued: no overflow", c->wq_bytes);
    guard_arm();
    ws_text(ws, "[\"1\",\"2\",\"lua:r\",\"go\",{}]"); /* the message hook starts the timer */
    RUN_CHECKED(c->flags & HD_CF_WS_CLOSE_SENT);
    guard_check(1);
    assert_int_equal(srv.st.slow_closes, 1);
    unstick(ws, c);
    expect_close(ws, 1013, "slow consumer");
    hd_buf_unref(big);
    ws_bye(ws, 1013);
}

/* A queue on more connections than the writer takes in one turn
 * (FLUSH_SLICE): the spinner stays on while a slice is left, so the next
 * turn does not block either. Plain TCP clients: the server's side stays
 * HTTP, which takes bytes without a limit. */
typedef struct raw {
    uv_tcp_t tcp;
    uv_connect_t cr;
    size_t got;
} raw;

static raw *raws; /* the open ones, nraws of them */
static size_t nraws, raw_connected_n, raw_closed_n;

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char buf[64]; /* reads are consumed at once */
    (void)h, (void)s;
    *b = uv_buf_init(buf, sizeof buf);
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    if (n > 0) ((raw *)s->data)->got += (size_t)n;
}

static void raw_connected(uv_connect_t *r, int status)
{
    raw *x = r->data;
    if (status == 0) uv_read_start((uv_stream_t *)&x->tcp, raw_alloc, raw_read);
    raw_connected_n++;
}

static void raw_closed(uv_handle_t *h)
{
    (void)h;
    raw_closed_n++;
}

static size_t raw_total(void)
{
    size_t got = 0;
    for (size_t i = 0; i < nraws; i++) got += raws[i].got;
    return got;
}

static void raws_close(void)
{
    if (!raws) return;
    raw_closed_n = 0;
    for (size_t i = 0; i < nraws; i++) uv_close((uv_handle_t *)&raws[i].tcp, raw_closed);
    RUN_UNTIL(raw_closed_n == nraws && srv.net.nconns == 0);
    free(raws);
    raws = NULL;
    nraws = 0;
}

static void test_writer_slices_keep_spinning(void **st)
{
    (void)st;
    enum { N = FLUSH_SLICE + 100 };
    raws = calloc(N, sizeof *raws);
    nraws = N;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", srv.port, &a);
    raw_connected_n = 0;
    for (size_t i = 0; i < N; i++) {
        raw *x = &raws[i];
        uv_tcp_init(&loop, &x->tcp);
        x->tcp.data = x->cr.data = x;
        assert_int_equal(uv_tcp_connect(&x->cr, &x->tcp, (struct sockaddr *)&a, raw_connected), 0);
    }
    RUN_UNTIL(raw_connected_n == N && srv.net.nconns == N);
    hd_buf *b = hd_buf_copy("x", 1);
    guard_arm();
    for (hd_conn *c = srv.net.conns; c; c = c->next) assert_int_equal(hd_conn_send(c, b), 0);
    hd_buf_unref(b);
    RUN_CHECKED(raw_total() == N);
    guard_check(2); /* before the first slice, and with the second left */
    raws_close();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_grow),
        cmocka_unit_test(test_ids_delete_in_wrapping_run),
        cmocka_unit_test(test_ids_random),
        cmocka_unit_test(test_identity_index),
        cmocka_unit_test_setup_teardown(test_send_limit_closes_1013, setup_small_queue, teardown),
        cmocka_unit_test_setup_teardown(test_drop_oldest_same_topic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frame_being_written_is_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shut_now_drops_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_presence_diff_written_before_poll, setup_timers,
                                        teardown_timers),
        cmocka_unit_test_setup_teardown(test_throttle_release_written_before_poll, setup_timers,
                                        teardown_timers),
        cmocka_unit_test_setup_teardown(test_lua_timer_publish_written_before_poll, setup_timers,
                                        teardown_timers),
        cmocka_unit_test_setup_teardown(test_drain_close_written_before_poll, setup_timers,
                                        teardown_timers),
        cmocka_unit_test_setup_teardown(test_reap_marked_in_timer_before_poll, setup_timers,
                                        teardown_timers),
        cmocka_unit_test_setup_teardown(test_writer_slices_keep_spinning, setup_timers,
                                        teardown_timers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
