/* tests/unit/harness.h: a real server and libuv clients on one loop, for
 * the loop tests (test_server.c and the module tests that need a live
 * node). Each test drives the loop until what it waits for arrives
 * (RUN_UNTIL, bounded), compares exact bytes, then teardown stops the
 * server and checks that on_stopped ran once and uv_loop_close()
 * succeeds: nothing leaked.
 *
 * Include it once, after cmocka.h, in a test's only translation unit:
 * everything here is static. setup_with(config_text) starts a server;
 * cli_new() connects a client; ws_client() upgrades one; join() joins a
 * topic; next_response()/next_frame() wait for the next answer. */
#ifndef HD_TEST_HARNESS_H
#define HD_TEST_HARNESS_H

#pragma GCC diagnostic ignored "-Wunused-function"

#include "buf.h"
#include "config.h"
#include "log.h"
#include "script.h"
#include "server.h"
#include "byhand.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t loop;
static uv_timer_t ticker; /* wakes the loop so that waits can time out */
static hd_config cfg;
static hd_server srv;
static int stopped;

static void on_stopped(hd_server *s)
{
    assert_ptr_equal(s, &srv);
    stopped++;
}

static void on_tick(uv_timer_t *t) { (void)t; }

#define RUN_UNTIL(cond)                                                                      \
    do {                                                                                     \
        uint64_t end_ = uv_now(&loop) + 5000;                                                \
        while (!(cond)) {                                                                    \
            if (uv_now(&loop) > end_) fail_msg("%s:%d: timed out waiting for %s", __FILE__,  \
                                               __LINE__, #cond);                             \
            uv_run(&loop, UV_RUN_ONCE);                                                      \
        }                                                                                    \
    } while (0)

static const char base_config[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "limits = { max_body_bytes = 1000, max_header_bytes = 1024, max_url_bytes = 256,\n"
    "           max_topics_per_socket = 2 }\n"
    "log = { level = 'warn' }\n";

static int setup_with(const char *text)
{
    char path[] = "/tmp/herald-test-server-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char err[512];
    unsetenv("HERALD_PORT");
    int rc = hd_config_load(&cfg, path, err, sizeof err);
    unlink(path);
    if (rc) fail_msg("%s", err);
    hd_log_set_level((hd_log_level)cfg.log_level);
    assert_int_equal(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    stopped = 0;
    assert_int_equal(hd_server_init(&srv, &loop, &cfg), 0);
    srv.on_stopped = on_stopped;
    assert_int_equal(hd_script_start(&srv.sc, err, sizeof err), 0);
    assert_int_equal(hd_server_start(&srv), 0);
    assert_true(srv.port > 0);
    assert_int_equal(srv.state, HD_READY);
    return 0;
}

static int setup(void **st)
{
    (void)st;
    return setup_with(base_config);
}

static struct cli *clients[64]; /* open clients: a failed test leaves some */
static void cli_abandon_all(void);

static int teardown(void **st)
{
    (void)st;
    cli_abandon_all();
    hd_server_stop(&srv);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(stopped, 1);
    assert_int_equal(srv.state, HD_STOPPED);
    assert_int_equal(srv.net.nconns, 0);
    assert_int_equal(srv.net.queued_bytes, 0);
    hd_server_free(&srv);
    assert_int_equal(uv_loop_close(&loop), 0); /* nothing leaked */
    hd_config_free(&cfg);
    return 0;
}

/* ---- a client ------------------------------------------------------------------ */

typedef struct cli {
    uv_tcp_t tcp;
    uv_connect_t cr;
    int connected, eof, closed;
    hd_str in;
} cli;

static void cli_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(s);
    b->len = s;
}

static void cli_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    cli *c = s->data;
    if (n > 0) hd_str_add(&c->in, b->base, (size_t)n);
    else if (n < 0) c->eof = 1;
    free(b->base);
}

static void cli_connected(uv_connect_t *r, int status)
{
    cli *c = r->data;
    assert_int_equal(status, 0);
    c->connected = 1;
    uv_read_start((uv_stream_t *)&c->tcp, cli_alloc, cli_read);
}

/* A client from source address src (NULL: any) to port. */
static cli *cli_new_at(const char *src, int port)
{
    cli *c = calloc(1, sizeof *c);
    uv_tcp_init(&loop, &c->tcp);
    if (src) {
        struct sockaddr_in b;
        uv_ip4_addr(src, 0, &b);
        assert_int_equal(uv_tcp_bind(&c->tcp, (struct sockaddr *)&b, 0), 0);
    }
    c->tcp.data = c->cr.data = c;
    hd_str_add(&c->in, "", 0);
    for (size_t i = 0; i < sizeof clients / sizeof *clients; i++)
        if (!clients[i]) {
            clients[i] = c;
            break;
        }
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    uv_tcp_connect(&c->cr, &c->tcp, (struct sockaddr *)&a, cli_connected);
    RUN_UNTIL(c->connected);
    return c;
}

static cli *cli_new(void) { return cli_new_at(NULL, srv.port); }

static void cli_closed(uv_handle_t *h) { ((cli *)h->data)->closed = 1; }

static void cli_free(cli *c)
{
    for (size_t i = 0; i < sizeof clients / sizeof *clients; i++)
        if (clients[i] == c) clients[i] = NULL;
    uv_close((uv_handle_t *)&c->tcp, cli_closed);
    RUN_UNTIL(c->closed);
    hd_str_free(&c->in);
    free(c);
}

static void cli_abandoned(uv_handle_t *h)
{
    cli *c = h->data;
    hd_str_free(&c->in);
    free(c);
}

static void cli_abandon_all(void)
{
    for (size_t i = 0; i < sizeof clients / sizeof *clients; i++) {
        if (clients[i] && !uv_is_closing((uv_handle_t *)&clients[i]->tcp))
            uv_close((uv_handle_t *)&clients[i]->tcp, cli_abandoned);
        clients[i] = NULL;
    }
}

typedef struct {
    uv_write_t w;
    char data[];
} wreq;

static void cli_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void cli_send(cli *c, const void *d, size_t n)
{
    wreq *w = malloc(sizeof *w + n);
    memcpy(w->data, d, n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    assert_int_equal(uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, cli_written), 0);
}

static void cli_sends(cli *c, const char *s) { cli_send(c, s, strlen(s)); }

/* Drops the first n received bytes. */
static void consume(cli *c, size_t n)
{
    memmove(c->in.p, c->in.p + n, c->in.len - n);
    c->in.len -= n;
    c->in.p[c->in.len] = 0;
}

/* Length of the first complete HTTP response in c->in, or 0. */
static size_t response_len(const cli *c)
{
    const char *end = strstr(c->in.p, "\r\n\r\n");
    if (!end) return 0;
    const char *cl = strstr(c->in.p, "Content-Length: ");
    if (!cl || cl > end) return (size_t)(end + 4 - c->in.p); /* 101: no body */
    size_t total = (size_t)(end + 4 - c->in.p) + strtoul(cl + 16, NULL, 10);
    return c->in.len >= total ? total : 0;
}

/* Waits for one whole response and returns it (caller frees). */
static char *next_response(cli *c)
{
    RUN_UNTIL(response_len(c) > 0);
    size_t n = response_len(c);
    char *r = strndup(c->in.p, n);
    consume(c, n);
    return r;
}

static char *expected(int status, const char *reason, const char *conn, const char *extra,
                      const char *body)
{
    char *s = malloc(1024 + strlen(body));
    sprintf(s,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: %s\r\n%s\r\n%s",
            status, reason, strlen(body), conn, extra, body);
    return s;
}

static void expect_response(cli *c, int status, const char *reason, const char *conn,
                            const char *extra, const char *body)
{
    char *got = next_response(c);
    char *want = expected(status, reason, conn, extra, body);
    assert_string_equal(got, want);
    free(got);
    free(want);
}

/* ---- WebSocket helpers -------------------------------------------------------------- */

static const char handshake[] =
    "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

/* A masked client frame; b0 is FIN|opcode. */
static void ws_send_b0(cli *c, uint8_t b0, const void *d, size_t n)
{
    uint8_t *f = malloc(14 + n);
    size_t h = 2;
    f[0] = b0;
    if (n < 126) {
        f[1] = (uint8_t)(0x80 | n);
    } else {
        f[1] = 0x80 | 126;
        f[2] = (uint8_t)(n >> 8), f[3] = (uint8_t)n;
        h = 4;
    }
    static const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(f + h, key, 4);
    for (size_t i = 0; i < n; i++) f[h + 4 + i] = ((const uint8_t *)d)[i] ^ key[i & 3];
    cli_send(c, f, h + 4 + n);
    free(f);
}

static void ws_send(cli *c, int op, const void *d, size_t n)
{
    ws_send_b0(c, (uint8_t)(0x80 | op), d, n);
}

static void ws_text(cli *c, const char *s) { ws_send(c, 1, s, strlen(s)); }

/* Length of the first whole server frame in c->in, or 0; sets *op, *pl, *pn. */
static size_t frame_len(const cli *c, int *op, size_t *pl, size_t *pn)
{
    const uint8_t *p = (const uint8_t *)c->in.p;
    if (c->in.len < 2) return 0;
    assert_int_equal(p[0] & 0x70, 0);
    assert_int_equal(p[0] & 0x80, 0x80); /* never fragmented */
    assert_int_equal(p[1] & 0x80, 0);    /* never masked */
    size_t n = p[1] & 0x7F, h = 2;
    if (n == 126) {
        if (c->in.len < 4) return 0;
        n = (size_t)p[2] << 8 | p[3], h = 4;
    } else if (n == 127) {
        if (c->in.len < 10) return 0;
        n = 0;
        for (int i = 0; i < 8; i++) n = n << 8 | p[2 + i];
        h = 10;
    }
    if (c->in.len < h + n) return 0;
    *op = p[0] & 0x0F, *pl = h, *pn = n;
    return h + n;
}

/* Waits for a frame; returns its payload (NUL-terminated, caller frees). */
static char *next_frame_n(cli *c, int *op, size_t *len)
{
    size_t pl, pn;
    RUN_UNTIL(frame_len(c, op, &pl, &pn) > 0);
    size_t n = frame_len(c, op, &pl, &pn);
    char *r = malloc(pn + 1);
    memcpy(r, c->in.p + pl, pn);
    r[pn] = 0;
    consume(c, n);
    *len = pn;
    return r;
}

static char *next_frame(cli *c, int *op)
{
    size_t n;
    return next_frame_n(c, op, &n);
}

static void expect_frame(cli *c, int op, const char *payload, size_t n)
{
    int got_op;
    size_t got_n;
    char *got = next_frame_n(c, &got_op, &got_n);
    if (got_op != op)
        fail_msg("expected opcode %d (%.*s), got %d: %.*s", op, (int)n, payload, got_op,
                 (int)got_n, got_op == 8 && got_n >= 2 ? got + 2 : got);
    if (op == 1) assert_string_equal(got, payload);
    assert_int_equal(got_n, n);
    assert_memory_equal(got, payload, n);
    free(got);
}

static void expect_text(cli *c, const char *s) { expect_frame(c, 1, s, strlen(s)); }

static cli *ws_client(void)
{
    cli *c = cli_new();
    cli_sends(c, handshake);
    char *r = next_response(c);
    assert_string_equal(r, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
    free(r);
    return c;
}

static void join(cli *c, const char *jr, const char *topic)
{
    char m[256], want[256];
    snprintf(m, sizeof m, "[\"%s\",\"%s\",\"%s\",\"phx_join\",{}]", jr, jr, topic);
    ws_text(c, m);
    snprintf(want, sizeof want,
             "[\"%s\",\"%s\",\"%s\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]", jr, jr,
             topic);
    expect_text(c, want);
}

/* ---- history (test_history.c, test_cluster.c) ------------------------------------ */

/* Joins with payload; returns the reply's response (caller frees). */
static json_t *join_with(cli *c, const char *topic, const char *payload)
{
    char m[512];
    snprintf(m, sizeof m, "[\"1\",\"1\",\"%s\",\"phx_join\",%s]", topic, payload);
    ws_text(c, m);
    json_t *msg = NULL;
    for (int i = 0; i < 2; i++) { /* (a join of a topic joined already closes it first) */
        int op;
        char *f = next_frame(c, &op);
        json_error_t e;
        msg = json_loads(f, 0, &e);
        free(f);
        assert_true(json_is_array(msg));
        if (strcmp(json_string_value(json_array_get(msg, 3)), "phx_close") != 0) break;
        json_decref(msg);
    }
    assert_string_equal(json_string_value(json_array_get(msg, 3)), "phx_reply");
    json_t *pl = json_array_get(msg, 4);
    assert_string_equal(json_string_value(json_object_get(pl, "status")), "ok");
    json_t *r = json_incref(json_object_get(pl, "response"));
    json_decref(msg);
    return r;
}

static const char *epoch_of(json_t *r) { return json_string_value(json_object_get(r, "epoch")); }
static long long offset_of(json_t *r) { return json_integer_value(json_object_get(r, "offset")); }

static json_t *rejoin(cli *c, const char *topic, const char *epoch, long long since)
{
    char pl[160];
    snprintf(pl, sizeof pl, "{\"since\":{\"epoch\":\"%s\",\"offset\":%lld}}", epoch, since);
    return join_with(c, topic, pl);
}

/* Joins topic without since; copies the reply's epoch into epoch[17]. */
static void join_epoch(cli *c, const char *topic, char *epoch)
{
    json_t *r = join_with(c, topic, "{}");
    snprintf(epoch, 17, "%s", epoch_of(r));
    json_decref(r);
}

static int recovered(json_t *r)
{
    json_t *v = json_object_get(r, "recovered");
    assert_true(json_is_boolean(v));
    return json_is_true(v);
}

/* ---- known bugs, scripts, bodies, presence (test_http.c, test_channel.c, test_api.c) -- */


/* Feeds n bytes to c as the transport does: never once c stopped taking
 * input, and from a buffer of exactly n bytes (ASan sees a read past the
 * end). */
static void conn_feed(hd_conn *c, const char *d, size_t n)
{
    if (n == 0 || (c->flags & (HD_CF_CLOSED | HD_CF_NO_INPUT))) return;
    uint8_t *copy = malloc(n);
    memcpy(copy, d, n);
    c->ops->on_read(c, copy, n);
    free(copy);
}

/* Everything queued on c, NUL-terminated (caller frees). */
static char *queued_text(const hd_conn *c)
{
    hd_str s = HD_STR_INIT;
    hd_str_add(&s, "", 0);
    for (const hd_wq_item *it = c->wq_head; it; it = it->next)
        hd_str_add(&s, it->buf->data + it->off, it->buf->len - it->off);
    return s.p;
}

/* setup_with(config) plus scripts = { <a file holding lua> }: config
 * must not set scripts itself. The file goes once the scripts loaded. */
static int setup_with_script(const char *config, const char *lua)
{
    char path[] = "/tmp/herald-test-script-XXXXXX.lua";
    int fd = mkstemps(path, 4);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, lua, strlen(lua)), (ssize_t)strlen(lua));
    close(fd);
    size_t n = strlen(config) + strlen(path) + 64;
    char *text = malloc(n);
    snprintf(text, n, "%s\nscripts = { '%s' }\n", config, path);
    int rc = setup_with(text);
    unlink(path);
    free(text);
    return rc;
}

/* Sends req on a new client, expects one answer with status line
 * "HTTP/1.1 <status>" and returns its body (caller frees). */
static char *request_body(const char *req, const char *status)
{
    cli *c = cli_new();
    cli_sends(c, req);
    char *r = next_response(c);
    char line[64];
    snprintf(line, sizeof line, "HTTP/1.1 %s\r\n", status);
    if (strncmp(r, line, strlen(line)) != 0) fail_msg("wanted %s, got: %s", line, r);
    char *body = strdup(strstr(r, "\r\n\r\n") + 4);
    free(r);
    cli_free(c);
    return body;
}

/* The body of a 200 answer to GET path. */
static char *get_body(const char *path)
{
    char req[1024];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    return request_body(req, "200 OK");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* GET /api/presence/<topic> (topic URL-encoded by the caller) as
 * "key:metas,key:metas" sorted by key, after checking that every meta
 * carries a phx_ref string and an online_at integer. "" when empty. */
static char *presence_summary(const char *topic)
{
    char path[512];
    snprintf(path, sizeof path, "/api/presence/%s", topic);
    char *body = get_body(path);
    json_error_t e;
    json_t *o = json_loads(body, 0, &e);
    if (!json_is_object(o)) fail_msg("presence is not a JSON object: %s", body);
    char *keys[64];
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        json_t *metas = json_object_get(v, "metas");
        assert_true(json_is_array(metas));
        size_t i;
        json_t *m;
        json_array_foreach(metas, i, m)
        {
            assert_true(json_is_string(json_object_get(m, "phx_ref")));
            assert_true(json_is_integer(json_object_get(m, "online_at")));
        }
        assert_true(n < 64);
        keys[n] = malloc(strlen(k) + 24);
        sprintf(keys[n++], "%s:%zu", k, json_array_size(metas));
    }
    qsort(keys, n, sizeof *keys, cmp_str);
    hd_str out = HD_STR_INIT;
    hd_str_add(&out, "", 0);
    for (size_t i = 0; i < n; i++) {
        if (i) hd_str_addc(&out, ',');
        hd_str_adds(&out, keys[i]);
        free(keys[i]);
    }
    json_decref(o);
    free(body);
    return out.p;
}

#endif
