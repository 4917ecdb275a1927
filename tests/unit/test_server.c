/* tests/unit/test_server.c: two servers in one loop, driven by a libuv
 * client: HTTP, the WebSocket handshake, a join and a publish; then both
 * stop and the loop closes with nothing left open. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api.h"
#include "config.h"
#include "script.h"
#include "server.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t conn;
    hd_server *srv;
    char buf[8192];
    size_t len;
    int step;
    int done;
} client;

static int stopped;
static void on_stopped(hd_server *srv)
{
    (void)srv;
    stopped++;
}

static void send_text(client *c, const char *s)
{
    /* A masked client frame (mask 0 keeps the bytes readable). */
    size_t n = strlen(s);
    uint8_t *f = malloc(6 + n);
    f[0] = 0x81;
    f[1] = (uint8_t)(0x80 | n);
    memset(f + 2, 0, 4);
    memcpy(f + 6, s, n);
    uv_buf_t b = uv_buf_init((char *)f, (unsigned)(6 + n));
    assert_true(uv_try_write((uv_stream_t *)&c->tcp, &b, 1) == (int)(6 + n));
    free(f);
}

static void alloc_cb(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)s;
    client *c = h->data;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof c->buf - c->len - 1));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    client *c = s->data;
    if (n < 0) {
        uv_close((uv_handle_t *)&c->tcp, NULL);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    if (c->step == 0 && strstr(c->buf, "{\"status\":\"ok\"}")) {
        assert_memory_equal(c->buf, "HTTP/1.1 200 OK\r\n", 17);
        assert_non_null(strstr(c->buf, "Connection: keep-alive"));
        c->len = 0;
        c->step = 1;
        const char *hs = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n";
        uv_buf_t w = uv_buf_init((char *)hs, (unsigned)strlen(hs));
        uv_try_write(s, &w, 1);
    } else if (c->step == 1 && strstr(c->buf, "\r\n\r\n")) {
        assert_non_null(strstr(c->buf, "101 Switching Protocols"));
        assert_non_null(strstr(c->buf, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        c->len = 0;
        c->step = 2;
        send_text(c, "[\"1\",\"1\",\"room:1\",\"phx_join\",{}]");
    } else if (c->step == 2 && strstr(c->buf, "phx_reply")) {
        assert_string_equal(c->buf + 2, "[\"1\",\"1\",\"room:1\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
        c->len = 0;
        c->step = 3;
        assert_int_equal(hd_api_publish(c->srv, "room:1", 6, "e", 1, "{\"a\":1}", 7), 1);
    } else if (c->step == 3 && c->len >= 2 && c->len >= (size_t)(2 + c->buf[1])) {
        assert_string_equal(c->buf + 2, "[null,null,\"room:1\",\"msg\",{\"data\":{\"a\":1},\"event\":\"e\"}]");
        c->done = 1;
        uv_close((uv_handle_t *)&c->tcp, NULL);
        hd_server_stop(c->srv);
    }
}

static void connect_cb(uv_connect_t *req, int status)
{
    client *c = req->data;
    assert_int_equal(status, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    const char *r = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    uv_buf_t w = uv_buf_init((char *)r, (unsigned)strlen(r));
    uv_try_write((uv_stream_t *)&c->tcp, &w, 1);
}

static void test_two_servers_one_loop(void **st)
{
    (void)st;
    setenv("HERALD_PORT", "0", 1);
    hd_config cfg;
    char err[256];
    assert_int_equal(hd_config_load(&cfg, NULL, err, sizeof err), 0);
    unsetenv("HERALD_PORT");
    free(cfg.host);
    cfg.host = strdup("127.0.0.1");
    uv_loop_t loop;
    uv_loop_init(&loop);
    hd_server srv[2];
    client cl[2];
    memset(cl, 0, sizeof cl);
    stopped = 0;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(hd_server_init(&srv[i], &loop, &cfg), 0);
        srv[i].on_stopped = on_stopped;
        assert_int_equal(hd_script_start(&srv[i], err, sizeof err), 0);
        assert_int_equal(hd_server_start(&srv[i]), 0);
        assert_true(srv[i].port > 0);
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", srv[i].port, &a);
        uv_tcp_init(&loop, &cl[i].tcp);
        cl[i].tcp.data = cl[i].conn.data = &cl[i];
        cl[i].srv = &srv[i];
        uv_tcp_connect(&cl[i].conn, &cl[i].tcp, (struct sockaddr *)&a, connect_cb);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(cl[0].done + cl[1].done, 2);
    assert_int_equal(stopped, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(srv[i].m.deliveries, 1);
        assert_int_equal(srv[i].nconns, 0);
        hd_server_free(&srv[i]);
    }
    assert_int_equal(uv_loop_close(&loop), 0); /* nothing leaked */
    hd_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_two_servers_one_loop)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
