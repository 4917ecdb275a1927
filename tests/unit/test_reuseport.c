/* tests/unit/test_reuseport.c: listen.reuseport. Two servers on one loop
 * (the harness's srv and a second one here) bind the same fixed port: with
 * reuseport both start and both serve; without it (on either side) the
 * second start fails with UV_EADDRINUSE, as a second herald process would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "harness.h"

#include <sys/socket.h>

static hd_server b; /* the second server */
static int b_stopped;

static void on_b_stopped(hd_server *s)
{
    assert_ptr_equal(s, &b);
    b_stopped++;
}

/* A port that was free a moment ago on host: bound with port 0, read back,
 * closed (on a loop of its own). Returns 0 when host cannot be bound. */
static int free_port(const char *host)
{
    uv_loop_t l;
    uv_tcp_t t;
    struct sockaddr_storage a;
    assert_int_equal(uv_loop_init(&l), 0);
    uv_tcp_init(&l, &t);
    int port = 0;
    if (uv_ip4_addr(host, 0, (struct sockaddr_in *)&a) &&
        uv_ip6_addr(host, 0, (struct sockaddr_in6 *)&a))
        fail_msg("%s is not an IP address", host);
    if (uv_tcp_bind(&t, (struct sockaddr *)&a, 0) == 0 && uv_listen((uv_stream_t *)&t, 1, NULL) == 0) {
        int len = sizeof a;
        assert_int_equal(uv_tcp_getsockname(&t, (struct sockaddr *)&a, &len), 0);
        port = ntohs(((struct sockaddr_in *)&a)->sin_port); /* same offset in sockaddr_in6 */
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&l, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&l), 0);
    return port;
}

static void config_text(char *out, size_t n, const char *host, int port, int reuseport)
{
    snprintf(out, n, "listen = { host = '%s', port = %d, reuseport = %s }\nlog = { level = 'error' }\n",
             host, port, reuseport ? "true" : "false");
}

static void load_cfg(const char *text, hd_config *c)
{
    char path[] = "/tmp/herald-test-reuseport-XXXXXX", err[512];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = hd_config_load(c, path, err, sizeof err);
    unlink(path);
    if (rc) fail_msg("%s", err);
}

/* Starts b on the harness's loop with c; returns hd_server_start's rc. */
static int start_b(const hd_config *c)
{
    char err[512];
    b_stopped = 0;
    assert_int_equal(hd_server_init(&b, &loop, c), 0);
    b.on_stopped = on_b_stopped;
    assert_int_equal(hd_script_start(&b.sc, err, sizeof err), 0);
    return hd_server_start(&b);
}

static void stop_b(void)
{
    hd_server_stop(&b);
    RUN_UNTIL(b_stopped == 1);
    assert_int_equal(b.state, HD_STOPPED);
    hd_server_free(&b);
}

/* SO_REUSEPORT as the kernel has it on a server's listening socket. */
static int reuseport_of(hd_server *s)
{
    uv_os_fd_t fd;
    assert_int_equal(uv_fileno((uv_handle_t *)&s->listener, &fd), 0);
    int v = -1;
    socklen_t l = sizeof v;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &v, &l), 0);
    return v;
}

/* cli_new() to host (the harness's client speaks IPv4 only). */
static cli *cli_at(const char *host)
{
    cli *c = calloc(1, sizeof *c);
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c->cr.data = c;
    hd_str_add(&c->in, "", 0);
    for (size_t i = 0; i < sizeof clients / sizeof *clients; i++)
        if (!clients[i]) {
            clients[i] = c;
            break;
        }
    struct sockaddr_storage a;
    if (uv_ip4_addr(host, srv.port, (struct sockaddr_in *)&a))
        assert_int_equal(uv_ip6_addr(host, srv.port, (struct sockaddr_in6 *)&a), 0);
    assert_int_equal(uv_tcp_connect(&c->cr, &c->tcp, (struct sockaddr *)&a, cli_connected), 0);
    RUN_UNTIL(c->connected);
    return c;
}

/* GET /healthz on a new connection to host:srv.port; 200, exact bytes. */
static void healthz(const char *host)
{
    cli *c = cli_at(host);
    cli_sends(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(c, 200, "OK", "keep-alive", "", "{\"status\":\"ok\"}");
    cli_free(c);
}

static int running; /* setup_with ran: the teardown has a server to stop */

static int teardown_if(void **st)
{
    if (!running) return 0;
    running = 0;
    return teardown(st);
}

static void start_a(const char *text)
{
    setup_with(text);
    running = 1;
}

static void shared(const char *host)
{
    int port = free_port(host);
    if (!port) skip(); /* no such address here (IPv6 off) */
    char text[256];
    config_text(text, sizeof text, host, port, 1);
    start_a(text);
    assert_int_equal(cfg.reuseport, 1);
    assert_int_equal(srv.port, port);
    assert_int_equal(start_b(&cfg), 0);
    assert_int_equal(b.state, HD_READY);
    assert_int_equal(b.port, port);
    assert_int_equal(reuseport_of(&srv), 1);
    assert_int_equal(reuseport_of(&b), 1);
    /* The kernel hands each connection to one of the two. */
    healthz(host);
    assert_int_equal(srv.st.tcp_accepted + b.st.tcp_accepted, 1);
    /* With the first server gone, the port still answers: the second one. */
    uint64_t before = b.st.tcp_accepted;
    hd_server_stop(&srv);
    RUN_UNTIL(stopped == 1);
    healthz(host);
    assert_int_equal(b.st.tcp_accepted, before + 1);
    stop_b();
}

static void test_shared_ipv4(void **st)
{
    (void)st;
    shared("127.0.0.1");
}

static void test_shared_ipv6(void **st)
{
    (void)st;
    shared("::1");
}

/* first/second: reuseport of the server already listening, and of the one
 * starting second. Any side without SO_REUSEPORT: the port is taken. */
static void in_use(int first, int second)
{
    int port = free_port("127.0.0.1");
    assert_true(port > 0);
    char text[256];
    config_text(text, sizeof text, "127.0.0.1", port, first);
    start_a(text);
    assert_int_equal(srv.port, port);
    assert_int_equal(reuseport_of(&srv), first);
    hd_config c2;
    config_text(text, sizeof text, "127.0.0.1", port, second);
    load_cfg(text, &c2);
    assert_int_equal(c2.reuseport, second);
    assert_int_equal(start_b(&c2), UV_EADDRINUSE);
    assert_int_not_equal(b.state, HD_READY);
    stop_b();
    hd_config_free(&c2);
    /* The first one is unharmed. */
    healthz("127.0.0.1");
    assert_int_equal(srv.st.tcp_accepted, 1);
}

static void test_in_use_without(void **st)
{
    (void)st;
    in_use(0, 0);
}

static void test_in_use_only_second(void **st)
{
    (void)st;
    in_use(0, 1);
}

static void test_in_use_only_first(void **st)
{
    (void)st;
    in_use(1, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_shared_ipv4, teardown_if),
        cmocka_unit_test_teardown(test_shared_ipv6, teardown_if),
        cmocka_unit_test_teardown(test_in_use_without, teardown_if),
        cmocka_unit_test_teardown(test_in_use_only_second, teardown_if),
        cmocka_unit_test_teardown(test_in_use_only_first, teardown_if),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
