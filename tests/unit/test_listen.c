/* The accept path and client addresses: listen.trusted_proxies,
 * X-Forwarded-For, the PROXY protocol (v1, v2), limits.max_connections_per_ip,
 * limits.connect_rate(_per_ip), the refusal at descriptor exhaustion, the
 * admin listener; and the address parsers underneath (core/addr.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "harness.h"

#include <fcntl.h>

static const char at_capacity[] = "{\"error\":\"server at capacity\",\"status\":500}";
static const char per_ip[] = "{\"error\":\"too many connections from this address\",\"status\":500}";
static const char rate[] = "{\"error\":\"connection rate exceeded\",\"status\":500}";

static const char healthz[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
static const char ok_body[] = "{\"status\":\"ok\"}";

static void expect_ok(cli *c)
{
    cli_sends(c, healthz);
    expect_response(c, 200, "OK", "keep-alive", "", ok_body);
}

static void expect_refused(cli *c, const char *extra, const char *body)
{
    expect_response(c, 503, "Service Unavailable", "close", extra, body);
    RUN_UNTIL(c->eof);
}

/* The server side of the newest connection: its client address. */
static const char *newest_client(void)
{
    static char buf[64];
    hd_conn *newest = NULL;
    for (hd_conn *c = srv.net.conns; c; c = c->next)
        if (!newest || c->id > newest->id) newest = c;
    assert_non_null(newest);
    hd_conn_client(newest, buf, sizeof buf);
    return buf;
}

static uint64_t refused(int reason) { return srv.st.tcp_refused[reason]; }

/* ---- the parsers --------------------------------------------------------------------- */

static void test_addr(void **st)
{
    (void)st;
    hd_addr a, b;
    char buf[64];
    assert_int_equal(hd_addr_parse(&a, "192.0.2.1", 9), 0);
    assert_true(hd_addr_is_v4(&a));
    hd_addr_format(&a, buf, sizeof buf);
    assert_string_equal(buf, "192.0.2.1");
    assert_int_equal(hd_addr_parse(&b, "::ffff:192.0.2.1", 16), 0);
    assert_true(hd_addr_eq(&a, &b));
    assert_int_equal(hd_addr_parse(&a, "2001:db8::1", 11), 0);
    hd_addr_format(&a, buf, sizeof buf);
    assert_string_equal(buf, "2001:db8::1");
    assert_int_equal(hd_addr_parse(&a, "192.0.2", 7), -1);
    assert_int_equal(hd_addr_parse(&a, "", 0), -1);
    assert_int_equal(hd_addr_parse(&a, "1.2.3.4x", 8), -1);
    assert_int_equal(hd_addr_parse(&a, "127.9.9.9", 9), 0);
    assert_true(hd_addr_loopback(&a));
    assert_int_equal(hd_addr_parse(&a, "::1", 3), 0);
    assert_true(hd_addr_loopback(&a));

    hd_cidr c[3];
    assert_int_equal(hd_cidr_parse(&c[0], "10.1.2.3/8"), 0);
    assert_int_equal(hd_cidr_parse(&c[1], "2001:db8::/32"), 0);
    assert_int_equal(hd_cidr_parse(&c[2], "192.0.2.7"), 0);
    assert_int_equal(hd_cidr_parse(&c[0], "10.0.0.0/33"), -1);
    assert_int_equal(hd_cidr_parse(&c[0], "10.0.0.0/"), -1);
    assert_int_equal(hd_cidr_parse(&c[0], "10.0.0.0/8x"), -1);
    assert_int_equal(hd_cidr_parse(&c[0], "example.com"), -1);
    assert_int_equal(hd_cidr_parse(&c[0], "10.1.2.3/8"), 0);
    const struct { const char *a; int in; } cases[] = {
        {"10.200.1.1", 1}, {"11.0.0.1", 0}, {"2001:db8:ff::5", 1}, {"2001:db9::1", 0},
        {"192.0.2.7", 1},  {"192.0.2.8", 0}, {"::ffff:10.0.0.1", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        assert_int_equal(hd_addr_parse(&a, cases[i].a, strlen(cases[i].a)), 0);
        assert_int_equal(hd_cidr_match(c, 3, &a), cases[i].in);
    }
}

static void test_xff(void **st)
{
    (void)st;
    hd_cidr t[2];
    assert_int_equal(hd_cidr_parse(&t[0], "127.0.0.0/8"), 0);
    assert_int_equal(hd_cidr_parse(&t[1], "10.0.0.0/8"), 0);
    const struct { const char *v; const char *client; } cases[] = {
        {"203.0.113.7", "203.0.113.7"},
        {"198.51.100.1, 203.0.113.7", "203.0.113.7"},        /* the rightmost: the proxy added it */
        {"198.51.100.1, 203.0.113.7, 10.0.0.3", "203.0.113.7"}, /* trusted hops skipped */
        {"203.0.113.7:5555", "203.0.113.7"},
        {"[2001:db8::9]:443", "2001:db8::9"},
        {" 2001:db8::9 ", "2001:db8::9"},
        {"garbage, 203.0.113.7", "203.0.113.7"},             /* left of the client: never read */
        {"10.0.0.1, 127.0.0.1", NULL},                       /* only proxies: the proxy's own */
        {"203.0.113.7, garbage", NULL},                      /* a proxy wrote nonsense */
        {"", NULL},
        {",,,", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        hd_addr a;
        int got = hd_xff_client(cases[i].v, strlen(cases[i].v), t, 2, &a);
        assert_int_equal(got, cases[i].client != NULL);
        if (!got) continue;
        char buf[64];
        hd_addr_format(&a, buf, sizeof buf);
        assert_string_equal(buf, cases[i].client);
    }
}

static size_t v2_header(uint8_t *out, uint8_t cmd, uint8_t fam, const uint8_t *addrs, size_t alen)
{
    static const uint8_t sig[12] = {'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};
    memcpy(out, sig, 12);
    out[12] = (uint8_t)(0x20 | cmd);
    out[13] = fam;
    out[14] = (uint8_t)(alen >> 8);
    out[15] = (uint8_t)alen;
    if (alen) memcpy(out + 16, addrs, alen);
    return 16 + alen;
}

static void test_proxy_parse(void **st)
{
    (void)st;
    hd_addr a;
    int named;
    size_t used;
    char buf[64];
    const char *v1 = "PROXY TCP4 192.0.2.9 127.0.0.1 5555 4000\r\nGET / HTTP/1.1\r\n";
    for (size_t n = 1; n < 42; n++) /* every prefix wants more */
        assert_int_equal(hd_proxy_parse((const uint8_t *)v1, n, &a, &named, &used), HD_PROXY_MORE);
    assert_int_equal(hd_proxy_parse((const uint8_t *)v1, strlen(v1), &a, &named, &used), HD_PROXY_OK);
    assert_int_equal(used, 42);
    assert_true(named);
    hd_addr_format(&a, buf, sizeof buf);
    assert_string_equal(buf, "192.0.2.9");
    const char *v6 = "PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
    assert_int_equal(hd_proxy_parse((const uint8_t *)v6, strlen(v6), &a, &named, &used), HD_PROXY_OK);
    hd_addr_format(&a, buf, sizeof buf);
    assert_string_equal(buf, "2001:db8::1");
    const char *unknown = "PROXY UNKNOWN\r\n";
    assert_int_equal(hd_proxy_parse((const uint8_t *)unknown, strlen(unknown), &a, &named, &used), HD_PROXY_OK);
    assert_false(named);
    const char *bad[] = {
        "PROXY TCP4 192.0.2.9 127.0.0.1 5555\r\n",      /* a port missing */
        "PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n",     /* family and address disagree */
        "PROXY TCP4 192.0.2.9 127.0.0.1 5555 99999\r\n", /* port out of range */
        "PROXY TCP4 192.0.2.9 127.0.0.1 1 2 extra\r\n",
        "PROXY UDP4 192.0.2.9 127.0.0.1 1 2\r\n",
        "PROXY TCP4 192.0.2.9 127.0.0.1 1 2\n", /* no CR */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(hd_proxy_parse((const uint8_t *)bad[i], strlen(bad[i]), &a, &named, &used), HD_PROXY_BAD);
    char longline[200];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "PROXY ", 6);
    assert_int_equal(hd_proxy_parse((const uint8_t *)longline, sizeof longline, &a, &named, &used), HD_PROXY_BAD);
    const char *http = "GET / HTTP/1.1\r\n";
    assert_int_equal(hd_proxy_parse((const uint8_t *)http, strlen(http), &a, &named, &used), HD_PROXY_NONE);
    assert_int_equal(hd_proxy_parse((const uint8_t *)"PRX", 3, &a, &named, &used), HD_PROXY_NONE);

    uint8_t h[600];
    const uint8_t four[12] = {192, 0, 2, 44, 127, 0, 0, 1, 0x15, 0xb3, 0x0f, 0xa0};
    size_t n = v2_header(h, 1, 0x11, four, sizeof four);
    for (size_t k = 1; k < n; k++)
        assert_int_equal(hd_proxy_parse(h, k, &a, &named, &used), HD_PROXY_MORE);
    assert_int_equal(hd_proxy_parse(h, n, &a, &named, &used), HD_PROXY_OK);
    assert_int_equal(used, 28);
    hd_addr_format(&a, buf, sizeof buf);
    assert_string_equal(buf, "192.0.2.44");
    n = v2_header(h, 0, 0x00, NULL, 0); /* LOCAL: a health check of the proxy's own */
    assert_int_equal(hd_proxy_parse(h, n, &a, &named, &used), HD_PROXY_OK);
    assert_false(named);
    n = v2_header(h, 1, 0x11, four, 8); /* too short for its family */
    assert_int_equal(hd_proxy_parse(h, n, &a, &named, &used), HD_PROXY_BAD);
    n = v2_header(h, 2, 0x11, four, sizeof four); /* no such command */
    assert_int_equal(hd_proxy_parse(h, n, &a, &named, &used), HD_PROXY_BAD);
    h[14] = 0x10; /* 4 KiB of TLVs: over HD_PROXY_MAX */
    assert_int_equal(hd_proxy_parse(h, 16, &a, &named, &used), HD_PROXY_BAD);
}

/* ---- limits.max_connections_per_ip ----------------------------------------------------- */

static int setup_per_ip(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0, trusted_proxies = {} }\n"
                      "limits = { max_connections_per_ip = 3 }\n"
                      "log = { level = 'error' }\n");
}

static void test_per_ip(void **st)
{
    (void)st;
    cli *mine[3];
    for (int i = 0; i < 3; i++) {
        mine[i] = cli_new_at("127.0.0.5", srv.port);
        expect_ok(mine[i]);
    }
    cli *over = cli_new_at("127.0.0.5", srv.port);
    expect_refused(over, "", per_ip);
    assert_int_equal(refused(HD_REFUSE_PER_IP), 1);
    /* Another address is not affected. */
    cli *other = cli_new_at("127.0.0.6", srv.port);
    expect_ok(other);
    /* Once one of the three leaves, the address may connect again. */
    size_t open = srv.net.nconns;
    cli_free(mine[0]);
    RUN_UNTIL(srv.net.nconns == open - 1);
    cli *again = cli_new_at("127.0.0.5", srv.port);
    expect_ok(again);
    assert_string_equal(newest_client(), "127.0.0.5");
    /* X-Forwarded-For from an untrusted peer names nothing. */
    cli_sends(other, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n");
    expect_response(other, 200, "OK", "keep-alive", "", ok_body);
    for (hd_conn *c = srv.net.conns; c; c = c->next) {
        char buf[64];
        hd_conn_client(c, buf, sizeof buf);
        assert_string_not_equal(buf, "203.0.113.9");
    }
    cli_free(over);
    cli_free(other);
    cli_free(again);
    cli_free(mine[1]);
    cli_free(mine[2]);
}

/* ---- trusted proxies: their own connections, X-Forwarded-For, PROXY ------------------------- */

static int setup_proxied(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n" /* trusts 127.0.0.0/8 */
                      "limits = { max_connections_per_ip = 2 }\n"
                      "log = { level = 'error' }\n");
}

static const char xff_upgrade[] =
    "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.7, 127.0.0.3\r\n\r\n";

static void test_proxied(void **st)
{
    (void)st;
    /* A trusted proxy's own connections are never capped. */
    cli *own[4];
    for (int i = 0; i < 4; i++) {
        own[i] = cli_new_at("127.0.0.9", srv.port);
        expect_ok(own[i]);
    }
    assert_int_equal(refused(HD_REFUSE_PER_IP), 0);
    /* Upgrades for one forwarded client: two fit, the third is refused. */
    cli *ws[3];
    for (int i = 0; i < 3; i++) {
        ws[i] = cli_new();
        cli_sends(ws[i], xff_upgrade);
    }
    for (int i = 0; i < 2; i++) {
        RUN_UNTIL(strstr(ws[i]->in.p, "\r\n\r\n") != NULL);
        assert_non_null(strstr(ws[i]->in.p, "HTTP/1.1 101 Switching Protocols\r\n"));
    }
    expect_refused(ws[2], "", per_ip);
    assert_int_equal(refused(HD_REFUSE_PER_IP), 1);
    int named = 0;
    for (hd_conn *c = srv.net.conns; c; c = c->next) {
        char buf[64];
        hd_conn_client(c, buf, sizeof buf);
        if (c->kind == HD_CONN_WS) named += strcmp(buf, "203.0.113.7") == 0;
    }
    assert_int_equal(named, 2);
    /* A keep-alive connection of the proxy carries requests of several
     * clients: each request is its own client's, and one without the
     * header is the proxy's. */
    cli_sends(own[0], "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.77\r\n\r\n");
    expect_response(own[0], 200, "OK", "keep-alive", "", ok_body);
    hd_conn *first = NULL;
    for (hd_conn *c = srv.net.conns; c; c = c->next)
        if (!first || c->id < first->id) first = c;
    char buf[64];
    hd_conn_client(first, buf, sizeof buf);
    assert_string_equal(buf, "192.0.2.77");
    expect_ok(own[0]);
    hd_conn_client(first, buf, sizeof buf);
    assert_string_equal(buf, "127.0.0.9");
    for (int i = 0; i < 4; i++) cli_free(own[i]);
    for (int i = 0; i < 3; i++) cli_free(ws[i]);
}

static void test_proxy_protocol(void **st)
{
    (void)st;
    /* v1, split across reads, then a request in the same packet. */
    cli *a = cli_new();
    cli_sends(a, "PROXY TCP4 192.0.2.9 127.0.0.1 5555 ");
    RUN_UNTIL(srv.net.nconns >= 1 && srv.net.conns->proto != NULL);
    cli_sends(a, "4000\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(a, 200, "OK", "keep-alive", "", ok_body);
    assert_string_equal(newest_client(), "192.0.2.9");
    /* X-Forwarded-For after a PROXY header is the client's own claim: ignored. */
    cli_sends(a, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n");
    expect_response(a, 200, "OK", "keep-alive", "", ok_body);
    assert_string_equal(newest_client(), "192.0.2.9");
    /* v2 with an IPv6 client. */
    uint8_t h[64];
    uint8_t six[36] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1, [31] = 1, 0, 80, 0, 80};
    size_t n = v2_header(h, 1, 0x21, six, sizeof six);
    cli *b = cli_new();
    cli_send(b, h, n);
    expect_ok(b);
    assert_string_equal(newest_client(), "2001:db8::1");
    /* The per-address limit applies to the named client: a third from 192.0.2.9. */
    cli *c = cli_new();
    cli_sends(c, "PROXY TCP4 192.0.2.9 127.0.0.1 5556 4000\r\n");
    expect_ok(c);
    cli *d = cli_new();
    cli_sends(d, "PROXY TCP4 192.0.2.9 127.0.0.1 5557 4000\r\n");
    expect_refused(d, "", per_ip);
    /* Malformed. */
    cli *e = cli_new();
    cli_sends(e, "PROXY TCP4 nonsense\r\n");
    expect_response(e, 400, "Bad Request", "close", "",
                    "{\"error\":\"bad request: malformed PROXY protocol header\"}");
    RUN_UNTIL(e->eof);
    /* A proxy's health check (v2 LOCAL) is the proxy's own. */
    cli *f = cli_new();
    n = v2_header(h, 0, 0, NULL, 0);
    cli_send(f, h, n);
    expect_ok(f);
    assert_string_equal(newest_client(), "127.0.0.1");
    cli_free(a);
    cli_free(b);
    cli_free(c);
    cli_free(d);
    cli_free(e);
    cli_free(f);
}

/* From an untrusted peer a PROXY header is not read: it is a bad request. */
static void test_proxy_untrusted(void **st)
{
    (void)st;
    cli *a = cli_new_at("127.0.0.5", srv.port);
    cli_sends(a, "PROXY TCP4 192.0.2.9 127.0.0.1 5555 4000\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = next_response(a);
    assert_non_null(strstr(r, "HTTP/1.1 400 Bad Request\r\n"));
    free(r);
    cli_free(a);
}

/* ---- limits.connect_rate and limits.connect_rate_per_ip ---------------------------------- */

static int setup_rate(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0, trusted_proxies = {} }\n"
                      "limits = { connect_rate = 3, connect_rate_per_ip = 1 }\n"
                      "log = { level = 'error' }\n");
}

static void test_connect_rate(void **st)
{
    (void)st;
    /* Per address: one a second. */
    cli *a = cli_new_at("127.0.0.7", srv.port);
    expect_ok(a);
    cli *a2 = cli_new_at("127.0.0.7", srv.port);
    expect_refused(a2, "Retry-After: 1\r\n", rate);
    assert_int_equal(refused(HD_REFUSE_RATE_PER_IP), 1);
    /* The node: three a second in all (a2 took one). */
    cli *b = cli_new_at("127.0.0.8", srv.port);
    expect_ok(b);
    cli *c = cli_new_at("127.0.0.10", srv.port);
    expect_refused(c, "Retry-After: 1\r\n", rate);
    assert_int_equal(refused(HD_REFUSE_RATE), 1);
    cli_free(a);
    cli_free(a2);
    cli_free(b);
    cli_free(c);
}

/* ---- out of descriptors ---------------------------------------------------------------- */

static void test_descriptors(void **st)
{
    (void)st;
    /* Fill this process's descriptors, then free one for the client's own
     * socket: the server's accept then fails with EMFILE. (A first client
     * makes libuv take the spare descriptor it keeps per loop.) */
    cli *first = cli_new();
    expect_ok(first);
    int *fds = malloc(sizeof *fds * 70000), n = 0;
    while (n < 70000 && (fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) n++;
    assert_true(n > 0 && n < 70000);
    close(fds[--n]);
    cli *a = cli_new();
    expect_refused(a, "", at_capacity);
    assert_int_equal(refused(HD_REFUSE_DESCRIPTORS), 1);
    while (n > 0) close(fds[--n]);
    free(fds);
    cli_free(a);
    cli_free(first);
    /* And the server serves again. */
    cli *b = cli_new();
    expect_ok(b);
    cli_free(b);
}

/* ---- the admin listener ---------------------------------------------------------------- */

static int setup_admin(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "admin = { host = '127.0.0.1', port = 0 }\n"
                      "log = { level = 'error' }\n");
}

static void test_admin(void **st)
{
    (void)st;
    static const char not_found[] = "{\"error\":\"not found\"}";
    assert_true(srv.admin_port > 0 && srv.admin_port != srv.port);
    cli *adm = cli_new_at(NULL, srv.admin_port);
    cli *pub = cli_new();
    expect_ok(adm);
    expect_ok(pub);
    cli_sends(adm, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = next_response(adm);
    assert_non_null(strstr(r, "herald_tcp_refused_total{reason=\"per_ip\"} 0\n"));
    free(r);
    cli_sends(adm, "GET /admin/status HTTP/1.1\r\nHost: x\r\n\r\n");
    r = next_response(adm);
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    free(r);
    /* The public port no longer serves the private routes, and the admin
     * port serves nothing else. */
    cli_sends(pub, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(pub, 404, "Not Found", "keep-alive", "", not_found);
    cli_sends(pub, "POST /admin/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    expect_response(pub, 404, "Not Found", "keep-alive", "", not_found);
    cli_sends(adm, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    expect_response(adm, 404, "Not Found", "keep-alive", "", not_found);
    cli_sends(adm, handshake);
    expect_response(adm, 404, "Not Found", "keep-alive", "", not_found);
    /* Silent connections filling the admin listener (32) cannot lock it:
     * a new one closes the one idle longest. */
    cli *silent[32];
    for (int i = 0; i < 31; i++) silent[i] = cli_new_at(NULL, srv.admin_port);
    RUN_UNTIL(srv.net.nadmin == 32);
    silent[31] = cli_new_at(NULL, srv.admin_port);
    RUN_UNTIL(adm->eof); /* (adm was idle longest) */
    cli *late = cli_new_at(NULL, srv.admin_port);
    expect_ok(late);
    assert_int_equal(refused(HD_REFUSE_CAPACITY), 0);
    for (int i = 0; i < 32; i++) cli_free(silent[i]);
    cli_free(late);
    /* Nor can clients that never close after an answer that closes (herald
     * waits for their FIN): one of those goes first. */
    RUN_UNTIL(srv.net.nadmin == 0);
    cli *closers[32];
    for (int i = 0; i < 32; i++) {
        closers[i] = cli_new_at(NULL, srv.admin_port);
        cli_sends(closers[i], "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        expect_response(closers[i], 200, "OK", "close", "", ok_body);
    }
    assert_int_equal(srv.net.nadmin, 32);
    late = cli_new_at(NULL, srv.admin_port);
    expect_ok(late);
    for (int i = 0; i < 32; i++) cli_free(closers[i]);
    cli_free(late);
    /* The drain closes the public port; the admin port stays for watching. */
    hd_server_drain(&srv, "test");
    RUN_UNTIL(!hd_listener_is_open(&srv.listener));
    assert_true(hd_listener_is_open(&srv.admin));
    cli_free(adm);
    cli_free(pub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr),
        cmocka_unit_test(test_xff),
        cmocka_unit_test(test_proxy_parse),
        cmocka_unit_test_setup_teardown(test_per_ip, setup_per_ip, teardown),
        cmocka_unit_test_setup_teardown(test_proxied, setup_proxied, teardown),
        cmocka_unit_test_setup_teardown(test_proxy_protocol, setup_proxied, teardown),
        cmocka_unit_test_setup_teardown(test_proxy_untrusted, setup_per_ip, teardown),
        cmocka_unit_test_setup_teardown(test_connect_rate, setup_rate, teardown),
        cmocka_unit_test_setup_teardown(test_descriptors, setup_per_ip, teardown),
        cmocka_unit_test_setup_teardown(test_admin, setup_admin, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
