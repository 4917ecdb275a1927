/* tests/unit/test_http.c: core/http.c without sockets. A connection is
 * built by hand on a real loop (its TCP handle is never connected), bytes
 * go in through its protocol's on_read as the transport would deliver
 * them, and the answers are read back from its write queue: the writer is
 * never started, so they stay there. Exact bytes, whatever the read
 * boundaries: every input is also fed cut at each byte and a byte at a
 * time, and must give the same requests and the same answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "conn.h"
#include "err.h"
#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* For its loop, its cfg (filled by hand here) and expected();
 * no server is started. */
#include "harness.h"

static hd_stats stats;
static hd_net net;
static hd_http_ctx ctx;
static int ud_marker;              /* the callback's ud */
static void (*http_free)(hd_conn *);
static int http_frees;             /* ctx.ops.free calls */
static int handles_closed;

static hd_str seen;                /* what the callback saw: one description per request */
static int nreq;

/* ---- the protocol a request may switch to -------------------------------------------- */

typedef struct tproto {
    hd_str in;                     /* every byte it was given */
} tproto;

static int t_frees, t_closed;

static void t_on_read(hd_conn *c, uint8_t *data, size_t len)
{
    hd_str_add(&((tproto *)c->proto)->in, data, len);
}

static void t_close(hd_conn *c, uint16_t code, const char *reason)
{
    (void)code, (void)reason;
    hd_conn_close(c);
}

static void t_on_closed(hd_conn *c)
{
    (void)c;
    t_closed++;
}

static void t_free(hd_conn *c)
{
    tproto *p = c->proto;
    hd_str_free(&p->in);
    free(p);
    c->proto = NULL;
    t_frees++;
}

static const hd_conn_ops test_ops = {.on_read = t_on_read, .close = t_close, .on_closed = t_on_closed, .free = t_free};

/* ---- the request callback -------------------------------------------------------------- */

/* Appends what a request looks like, through the hook view (checked to
 * point into r). */
static void describe(hd_str *o, const hd_http_req *r, int upgrade)
{
    hd_hook_req v;
    hd_http_hook_req(r, &v);
    assert_ptr_equal(v.path, r->path);
    assert_int_equal(v.path_len, r->path_len);
    assert_ptr_equal(v.query, r->query);
    assert_int_equal(v.query_len, r->query_len);
    assert_ptr_equal(v.hbuf, r->hbuf.p);
    assert_ptr_equal(v.h, r->h);
    assert_int_equal(v.nh, r->nh);
    hd_str_printf(o, "%s %.*s path=%.*s query=", v.method, (int)r->url.len, r->url.p,
                  (int)v.path_len, v.path);
    if (v.query) hd_str_printf(o, "[%.*s]", (int)v.query_len, v.query);
    else hd_str_adds(o, "none");
    hd_str_printf(o, " keep_alive=%d upgrade=%d\n", r->keep_alive, upgrade);
    for (uint32_t i = 0; i < v.nh; i++) {
        const hd_hdr *h = &v.h[i];
        /* Names are NUL-terminated in hbuf (values are not, once trailing
         * blanks are trimmed: they go by length). */
        assert_int_equal(v.hbuf[h->name_off + h->name_len], 0);
        hd_str_printf(o, "  [%.*s]=[%.*s]\n", (int)h->name_len, v.hbuf + h->name_off,
                      (int)h->val_len, v.hbuf + h->val_off);
    }
    hd_str_printf(o, "  body %zu [%.*s]\n", r->body.len, (int)r->body.len, r->body.p);
}

static int path_starts(const hd_http_req *r, const char *prefix)
{
    size_t n = strlen(prefix);
    return r->path_len >= n && memcmp(r->path, prefix, n) == 0;
}

/* /switch...: switches to test_ops; /silent...: no answer; /close...:
 * answers and closes; anything else: 200 with the path as the body. */
static void on_request(void *ud, hd_conn *c, hd_http_req *r, int upgrade)
{
    assert_ptr_equal(ud, &ud_marker);
    assert_int_equal(hd_http_busy(c), 0); /* the request is complete */
    describe(&seen, r, upgrade);
    nreq++;
    if (path_starts(r, "/switch")) {
        hd_conn_send_copy(c, "SWITCHED\n", 9);
        tproto *p = calloc(1, sizeof *p);
        assert_non_null(p);
        hd_str_add(&p->in, "", 0);
        hd_conn_upgrade(c, HD_CONN_WS, &test_ops, p);
    } else if (!path_starts(r, "/silent")) {
        hd_http_respond(c, r, 200, "text/plain", r->path, r->path_len, NULL,
                        path_starts(r, "/close"));
    }
}

static void counting_free(hd_conn *c)
{
    http_frees++;
    http_free(c);
}

/* ---- connections by hand ----------------------------------------------------------------- */

static hd_conn *conn_new(void) { return conn_by_hand(&net, &ctx.ops); }

/* Closes c and runs the loop until its close callback freed it. */
static void conn_end(hd_conn *c)
{
    size_t n = net.nconns;
    int frees = http_frees + t_frees;
    hd_conn_close(c);
    for (int i = 0; i < 100 && net.nconns == n; i++) uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(net.nconns, n - 1);
    assert_int_equal(http_frees + t_frees, frees + 1); /* ops->free ran once */
}

static void feeds(hd_conn *c, const char *s) { conn_feed(c, s, strlen(s)); }

/* Everything queued on c (NUL-terminated, caller frees); the queue is
 * emptied. */
static char *take_out(hd_conn *c)
{
    char *s = queued_text(c);
    hd_conn_drop_queue(c);
    assert_null(c->wq_head);
    assert_int_equal(c->wq_bytes, 0);
    return s;
}

static char *take_seen(void)
{
    char *s = strdup(seen.p ? seen.p : "");
    hd_str_reset(&seen);
    return s;
}

/* ---- expected answers -------------------------------------------------------------------- */

static char *answer(const char *status, const char *ctype, const char *body, size_t clen,
                    const char *conn)
{
    hd_str s = HD_STR_INIT;
    hd_str_printf(&s,
                  "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                  "Cache-Control: no-store\r\nConnection: %s\r\n\r\n%s",
                  status, ctype, clen, conn, body);
    return s.p;
}

/* The callback's answer to path. */
static char *ok(const char *path, const char *conn)
{
    return answer("200 OK", "text/plain", path, strlen(path), conn);
}

/* An error answer: {"error": msg}, Connection: close. */
static char *err_answer(int status, const char *reason, const char *msg)
{
    char body[512];
    snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    return expected(status, reason, "close", "", body);
}

/* What hd_http_error queues on a new connection for a keep-alive request
 * of method (caller frees); *flags gets the connection's flags. */
static char *error_bytes(int method, int status, const char *msg, const char *extra,
                         uint32_t *flags)
{
    hd_conn *c = conn_new();
    hd_http_req r;
    memset(&r, 0, sizeof r);
    r.method = method;
    r.keep_alive = 1;
    hd_http_error(c, &r, status, msg, extra, 0);
    char *got = take_out(c);
    *flags = c->flags;
    conn_end(c);
    return got;
}

/* Concatenates NULL-terminated malloc'd strings, freeing them. */
static char *cat(char *first, ...)
{
    hd_str s = HD_STR_INIT;
    hd_str_add(&s, "", 0);
    va_list ap;
    va_start(ap, first);
    for (char *p = first; p; p = va_arg(ap, char *)) {
        hd_str_adds(&s, p);
        free(p);
    }
    va_end(ap);
    return s.p;
}

/* ---- sessions ---------------------------------------------------------------------------- */

typedef struct result {
    char *seen;                    /* the callback's descriptions */
    char *out;                     /* the queued answers */
    char *switched;                /* bytes the switched-to protocol got, or NULL */
    uint32_t flags;                /* the connection's at the end */
    int nreq;
} result;

static void result_free(result *r)
{
    free(r->seen);
    free(r->out);
    free(r->switched);
}

/* One connection fed in with one cut at cut (0: one piece; (size_t)-1: a
 * byte at a time). */
static result session(const char *in, size_t cut)
{
    size_t n = strlen(in);
    hd_conn *c = conn_new();
    int n0 = nreq;
    hd_str_reset(&seen);
    if (cut == (size_t)-1) {
        for (size_t i = 0; i < n; i++) conn_feed(c, in + i, 1);
    } else {
        conn_feed(c, in, cut);
        conn_feed(c, in + cut, n - cut);
    }
    result r;
    r.seen = take_seen();
    r.out = take_out(c);
    r.switched = c->ops == &test_ops ? strdup(((tproto *)c->proto)->in.p) : NULL;
    r.flags = c->flags;
    r.nreq = nreq - n0;
    conn_end(c);
    return r;
}

static void expect_same(const char *what, size_t cut, const char *got, const char *want)
{
    if ((got == NULL) != (want == NULL) || (got && strcmp(got, want) != 0))
        fail_msg("%s, cut at %zd:\n--- got:\n%s\n--- want:\n%s", what, (ssize_t)cut,
                 got ? got : "(null)", want ? want : "(null)");
}

/* in gives want_seen and want_out (and, when not NULL, want_switched to
 * the switched-to protocol) in one piece, cut at every byte, and a byte at
 * a time. Returns the connection flags of the one-piece run. */
static uint32_t expect_session(const char *in, const char *want_seen, const char *want_out,
                               const char *want_switched)
{
    size_t n = strlen(in);
    uint32_t flags = 0;
    for (size_t cut = 0; cut <= n; cut++) {
        size_t k = cut == n ? (size_t)-1 : cut;
        result r = session(in, k);
        expect_same("requests", k, r.seen, want_seen);
        expect_same("answers", k, r.out, want_out);
        expect_same("switched bytes", k, r.switched, want_switched);
        if (cut == 0) flags = r.flags;
        else assert_int_equal(r.flags & HD_CF_NO_INPUT, flags & HD_CF_NO_INPUT);
        result_free(&r);
    }
    return flags;
}

/* ---- fixture ----------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    assert_ptr_equal(h->data, &net);
    handles_closed++;
}

static int setup_http(void **state)
{
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_url_bytes = 64;
    cfg.max_header_bytes = 256;
    cfg.max_body_bytes = 16;
    cfg.max_inbound_bytes = 1 << 26;
    cfg.max_connections = 100;
    cfg.send_queue_bytes = 1 << 20;
    cfg.max_queued_bytes = 1 << 26;
    cfg.ws_close_ms = 1000;
    memset(&stats, 0, sizeof stats);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(hd_net_init(&net, &loop, &cfg, &stats), 0);
    hd_http_init(&ctx, &cfg, &stats, on_request, &ud_marker);
    http_free = ctx.ops.free;
    ctx.ops.free = counting_free;
    net.accept_ops = &ctx.ops;
    nreq = http_frees = t_frees = t_closed = handles_closed = 0;
    hd_str_reset(&seen);
    return 0;
}

static int teardown_http(void **state)
{
    (void)state;
    size_t left = net.nconns; /* a test leaves none open */
    hd_net_close_all(&net);
    uv_run(&loop, UV_RUN_NOWAIT);
    hd_net_close_handles(&net, on_handle_closed, &net);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(handles_closed, 2);
    hd_net_free(&net);
    assert_int_equal(uv_loop_close(&loop), 0); /* nothing leaked */
    hd_str_free(&seen);
    assert_int_equal(left, 0);
    return 0;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* Three requests (a body with Content-Length and a query, a chunked body
 * with an extension and a trailer, header shapes) give the same requests
 * and answers however the reads cut them. */
static void test_request_fields(void **state)
{
    (void)state;
    const char *in = "POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                     "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
                     "GET /d? HTTP/1.1\r\nX-Empty:\r\nX-Blank:   v  w \t\r\nMiXeD-Case: Q\r\n\r\n";
    const char *want_seen =
        "POST /a/b?x=1&y=%20 path=/a/b query=[x=1&y=%20] keep_alive=1 upgrade=0\n"
        "  [Host]=[h]\n  [Content-Length]=[5]\n  body 5 [hello]\n"
        "PUT /c path=/c query=none keep_alive=1 upgrade=0\n"
        "  [Transfer-Encoding]=[chunked]\n  [X-Trailer]=[t]\n  body 5 [abcde]\n"
        "GET /d? path=/d query=[] keep_alive=1 upgrade=0\n"
        "  [X-Empty]=[]\n  [X-Blank]=[v  w]\n  [MiXeD-Case]=[Q]\n"
        "  body 0 []\n";
    char *want_out = cat(ok("/a/b", "keep-alive"), ok("/c", "keep-alive"),
                         ok("/d", "keep-alive"), NULL);
    uint32_t flags = expect_session(in, want_seen, want_out, NULL);
    assert_int_equal(flags & (HD_CF_NO_INPUT | HD_CF_FINISH), 0);
    free(want_out);
    /* (n + 1) sessions of 3 answers each, all 200. */
    assert_int_equal(stats.http_requests, 3 * (strlen(in) + 1));
    assert_int_equal(stats.http_errors_4xx, 0);
}

/* Pipelined requests in one read are called back and answered in order,
 * also when one in the middle gets no answer. */
static void test_pipelined_order(void **state)
{
    (void)state;
    hd_conn *c = conn_new();
    feeds(c, "GET /1 HTTP/1.1\r\n\r\nGET /silent HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"
             "GET /4 HTTP/1.1\r\n\r\n");
    assert_int_equal(nreq, 4);
    char *s = take_seen();
    assert_string_equal(s,
                        "GET /1 path=/1 query=none keep_alive=1 upgrade=0\n  body 0 []\n"
                        "GET /silent path=/silent query=none keep_alive=1 upgrade=0\n  body 0 []\n"
                        "GET /3 path=/3 query=none keep_alive=1 upgrade=0\n  body 0 []\n"
                        "GET /4 path=/4 query=none keep_alive=1 upgrade=0\n  body 0 []\n");
    free(s);
    char *got = take_out(c);
    char *want = cat(ok("/1", "keep-alive"), ok("/3", "keep-alive"), ok("/4", "keep-alive"), NULL);
    assert_string_equal(got, want);
    free(got);
    free(want);
    /* The connection goes on: a next read is a next request. */
    feeds(c, "GET /5 HTTP/1.1\r\n\r\n");
    got = take_out(c);
    want = ok("/5", "keep-alive");
    assert_string_equal(got, want);
    free(got);
    free(want);
    conn_end(c);
}

/* Each limit: the exact JSON error with Connection: close, no callback,
 * and nothing after it is read (the rest of the read nor later reads). */
static void test_limits(void **state)
{
    (void)state;
    char url[128], hdr[512], many[1024];
    snprintf(url, sizeof url, "GET /%0*d HTTP/1.1\r\n\r\n", 64, 0); /* 65 bytes */
    snprintf(hdr, sizeof hdr, "GET /h HTTP/1.1\r\nX-Big: %0*d\r\n\r\n", 250, 0); /* 257 */
    size_t o = (size_t)snprintf(many, sizeof many, "GET /m HTTP/1.1\r\n");
    for (int i = 0; i < HD_HTTP_MAX_HEADERS + 1; i++)
        o += (size_t)snprintf(many + o, sizeof many - o, "A: b\r\n");
    snprintf(many + o, sizeof many - o, "\r\n");
    static const char after[] = "GET /after HTTP/1.1\r\n\r\n";
    const struct {
        const char *in;
        int status;
        const char *reason, *msg;
    } cases[] = {
        {url, 414, "URI Too Long", "URI too long"},
        {hdr, 431, "Request Header Fields Too Large", "request header fields too large"},
        {many, 431, "Request Header Fields Too Large", "request header fields too large"},
        {"POST /b HTTP/1.1\r\nContent-Length: 17\r\n\r\n12345678901234567", 413,
         "Content Too Large", "request body too large"},
        {"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n9\r\n123456789\r\n"
         "0\r\n\r\n",
         413, "Content Too Large", "request body too large"},
        {"HELLO\r\n\r\n", 400, "Bad Request", "bad request: Invalid method encountered"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *in = malloc(strlen(cases[i].in) + sizeof after);
        strcpy(in, cases[i].in);
        strcat(in, after);
        char *want = err_answer(cases[i].status, cases[i].reason, cases[i].msg);
        uint64_t e0 = stats.http_errors_4xx;
        uint32_t flags = expect_session(in, "", want, NULL);
        assert_int_equal(flags & (HD_CF_NO_INPUT | HD_CF_FINISH), HD_CF_NO_INPUT | HD_CF_FINISH);
        assert_int_equal(stats.http_errors_4xx - e0, strlen(in) + 1); /* one per session */
        /* A request before the bad one is answered first. */
        hd_conn *c = conn_new();
        feeds(c, "GET /first HTTP/1.1\r\n\r\n");
        feeds(c, in);
        feeds(c, after); /* a later read: ignored */
        char *got = take_out(c);
        char *both = cat(ok("/first", "keep-alive"), strdup(want), NULL);
        assert_string_equal(got, both);
        free(got);
        free(both);
        conn_end(c);
        free(want);
        free(in);
    }
    assert_int_equal(nreq, (int)(sizeof cases / sizeof *cases)); /* only the /first ones */
}

/* A blank in a header name: 400, Connection: close, nothing more read,
 * wherever the reads cut. llhttp refuses a tab itself; "Host : x" it lets
 * through (8.1), and http.c refuses it (RFC 9112 5.1), with a message
 * that should say why. */
static void test_blank_in_header_name(void **state)
{
    (void)state;
    static const char after[] = "GET /after HTTP/1.1\r\n\r\n";
    char in[256];
    snprintf(in, sizeof in, "GET /x HTTP/1.1\r\nHo\tst: x\r\n\r\n%s", after);
    char *want = err_answer(400, "Bad Request", "bad request: Invalid header token");
    expect_session(in, "", want, NULL);
    free(want);
    snprintf(in, sizeof in, "GET /x HTTP/1.1\r\nHost : x\r\n\r\n%s", after);
    static const char head[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n";
    static const char tail[] = "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                               "{\"error\":\"bad request: ";
    size_t n = strlen(in);
    for (size_t cut = 0; cut <= n; cut++) {
        result r = session(in, cut == n ? (size_t)-1 : cut);
        assert_string_equal(r.seen, "");
        assert_memory_equal(r.out, head, sizeof head - 1);
        assert_non_null(strstr(r.out, tail));
        assert_int_equal(r.flags & (HD_CF_NO_INPUT | HD_CF_FINISH), HD_CF_NO_INPUT | HD_CF_FINISH);
        result_free(&r);
    }
    want = err_answer(400, "Bad Request", "bad request: blank in a header name");
    expect_session(in, "", want, NULL);
    free(want);
}

/* One byte under each limit is accepted. */
static void test_limits_boundaries(void **state)
{
    (void)state;
    char url[128], path[80], hdr[512], many[1024];
    snprintf(path, sizeof path, "/%0*d", 63, 0); /* 64 bytes: max_url_bytes */
    snprintf(url, sizeof url, "GET %s HTTP/1.1\r\n\r\n", path);
    /* URL (2) + name (5) + value (249) = 256: max_header_bytes. */
    snprintf(hdr, sizeof hdr, "GET /h HTTP/1.1\r\nX-Big: %0*d\r\n\r\n", 249, 0);
    size_t o = (size_t)snprintf(many, sizeof many, "GET /m HTTP/1.1\r\n");
    for (int i = 0; i < HD_HTTP_MAX_HEADERS; i++)
        o += (size_t)snprintf(many + o, sizeof many - o, "A: b\r\n");
    snprintf(many + o, sizeof many - o, "\r\n");
    const struct {
        const char *in, *path;
    } cases[] = {
        {url, path},
        {hdr, "/h"},
        {many, "/m"},
        {"POST /b HTTP/1.1\r\nContent-Length: 16\r\n\r\n1234567890123456", "/b"},
        {"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n"
         "0\r\n\r\n",
         "/c"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        hd_conn *c = conn_new();
        feeds(c, cases[i].in);
        char *got = take_out(c);
        char *want = ok(cases[i].path, "keep-alive");
        assert_string_equal(got, want);
        assert_int_equal(c->flags & HD_CF_NO_INPUT, 0);
        free(got);
        free(want);
        conn_end(c);
    }
    assert_int_equal(nreq, 5);
    assert_int_equal(stats.http_errors_4xx, 0);
}

/* Keep-alive is HTTP/1.1's default and HTTP/1.0's on request; Connection:
 * close, HTTP/1.0 without keep-alive, CONNECT and an answer that closes
 * end the connection, and what follows is not read. */
static void test_keep_alive(void **state)
{
    (void)state;
    static const char next[] = "GET /next HTTP/1.1\r\n\r\n";
    const struct {
        const char *in, *path, *conn;
    } cases[] = {
        {"GET /a HTTP/1.1\r\n\r\n", "/a", "keep-alive"},
        {"GET /a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", "/a", "keep-alive"},
        {"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "/a", "keep-alive"},
        {"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", "/a", "close"},
        {"GET /a HTTP/1.1\r\nConnection: Close\r\n\r\n", "/a", "close"},
        {"GET /a HTTP/1.0\r\n\r\n", "/a", "close"},
        {"GET /close HTTP/1.1\r\n\r\n", "/close", "close"}, /* the callback closes */
        {"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", "h:443", "close"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char in[256];
        snprintf(in, sizeof in, "%s%s", cases[i].in, next);
        int closes = strcmp(cases[i].conn, "close") == 0;
        char *want = closes ? ok(cases[i].path, "close")
                            : cat(ok(cases[i].path, "keep-alive"), ok("/next", "keep-alive"), NULL);
        result r = session(in, 0);
        expect_same(cases[i].in, 0, r.out, want);
        assert_int_equal(r.nreq, closes ? 1 : 2);
        assert_int_equal(r.flags & HD_CF_FINISH, closes ? HD_CF_FINISH : 0);
        result_free(&r);
        /* A later read after a closing answer: not read either. */
        hd_conn *c = conn_new();
        feeds(c, cases[i].in);
        free(take_out(c));
        feeds(c, next);
        char *more = take_out(c);
        char *next_ok = closes ? strdup("") : ok("/next", "keep-alive");
        assert_string_equal(more, next_ok);
        free(next_ok);
        free(more);
        conn_end(c);
        free(want);
    }
}

/* While the node drains (ctx.closing), every answer says Connection:
 * close, errors included, and the next pipelined request is not read. */
static void test_closing(void **state)
{
    (void)state;
    ctx.closing = 1;
    char *want = ok("/a", "close");
    uint32_t flags = expect_session("GET /a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
                                    "GET /b HTTP/1.1\r\n\r\n",
                                    "GET /a path=/a query=none keep_alive=1 upgrade=0\n"
                                    "  [Connection]=[keep-alive]\n  body 0 []\n",
                                    want, NULL);
    assert_true(flags & HD_CF_FINISH);
    free(want);
    /* An answer the callback asked to keep open closes too. */
    char *got = error_bytes(HTTP_GET, 404, "not found", "X-A: b\r\n", &flags);
    assert_string_equal(got, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                             "Content-Length: 21\r\nCache-Control: no-store\r\n"
                             "Connection: close\r\nX-A: b\r\n\r\n{\"error\":\"not found\"}");
    assert_true(flags & HD_CF_FINISH);
    free(got);
    ctx.closing = 0;
}

/* HEAD answers carry the Content-Length of the body they leave out; the
 * next pipelined answer follows the head at once. */
static void test_head(void **state)
{
    (void)state;
    char *want = cat(answer("200 OK", "text/plain", "", 4, "keep-alive"), ok("/get", "keep-alive"),
                     NULL);
    expect_session("HEAD /abc HTTP/1.1\r\n\r\nGET /get HTTP/1.1\r\n\r\n",
                   "HEAD /abc path=/abc query=none keep_alive=1 upgrade=0\n  body 0 []\n"
                   "GET /get path=/get query=none keep_alive=1 upgrade=0\n  body 0 []\n",
                   want, NULL);
    free(want);
    /* An error answer to HEAD too. */
    uint32_t flags;
    char *got = error_bytes(HTTP_HEAD, 405, "method not allowed", "Allow: GET\r\n", &flags);
    assert_string_equal(got, "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\n"
                             "Content-Length: 30\r\nCache-Control: no-store\r\n"
                             "Connection: keep-alive\r\nAllow: GET\r\n\r\n");
    assert_int_equal(flags & HD_CF_FINISH, 0);
    free(got);
}

/* An upgrade request the callback does not take is answered as plain
 * HTTP, and parsing resumes with the next request, wherever the reads
 * cut. */
static void test_upgrade_declined(void **state)
{
    (void)state;
    char *want = cat(ok("/up", "keep-alive"), ok("/next", "keep-alive"), NULL);
    uint32_t flags =
        expect_session("GET /up HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                       "GET /next HTTP/1.1\r\n\r\n",
                       "GET /up path=/up query=none keep_alive=1 upgrade=1\n"
                       "  [Connection]=[Upgrade]\n  [Upgrade]=[h2c]\n  body 0 []\n"
                       "GET /next path=/next query=none keep_alive=1 upgrade=0\n  body 0 []\n",
                       want, NULL);
    assert_int_equal(flags & (HD_CF_NO_INPUT | HD_CF_FINISH), 0);
    free(want);
    /* Declined without an answer: the next one is still read. */
    want = ok("/next", "keep-alive");
    expect_session("GET /silent HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                   "GET /next HTTP/1.1\r\n\r\n",
                   "GET /silent path=/silent query=none keep_alive=1 upgrade=1\n"
                   "  [Connection]=[Upgrade]\n  [Upgrade]=[h2c]\n  body 0 []\n"
                   "GET /next path=/next query=none keep_alive=1 upgrade=0\n  body 0 []\n",
                   want, NULL);
    free(want);
}

/* When the callback switches the protocol, the bytes after the request
 * (in the same read or later ones) go to the new protocol's on_read, none
 * is parsed as HTTP, and the HTTP state is freed (ASan would report it). */
static void test_upgrade_switch(void **state)
{
    (void)state;
    const char *tail = "\x81\x85" "frame GET /x HTTP/1.1\r\n\r\n";
    char in[512];
    snprintf(in, sizeof in, "GET /switch HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                            "\r\n%s", tail);
    int frees0 = http_frees;
    expect_session(in,
                   "GET /switch path=/switch query=none keep_alive=1 upgrade=1\n"
                   "  [Connection]=[Upgrade]\n  [Upgrade]=[websocket]\n  body 0 []\n",
                   "SWITCHED\n", tail);
    /* Every session's connection was freed by the switched-to protocol. */
    assert_int_equal(http_frees, frees0);
    assert_int_equal(t_frees, (int)strlen(in) + 1);
    assert_int_equal(t_closed, (int)strlen(in) + 1);
    assert_int_equal(net.nws, 0);
    /* A declined upgrade, then a taken one, then frames, in one read. */
    snprintf(in, sizeof in, "GET /up HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                            "GET /switch2 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                            "\r\n%s", tail);
    char *want = cat(ok("/up", "keep-alive"), strdup("SWITCHED\n"), NULL);
    expect_session(in,
                   "GET /up path=/up query=none keep_alive=1 upgrade=1\n"
                   "  [Connection]=[Upgrade]\n  [Upgrade]=[h2c]\n  body 0 []\n"
                   "GET /switch2 path=/switch2 query=none keep_alive=1 upgrade=1\n"
                   "  [Connection]=[Upgrade]\n  [Upgrade]=[websocket]\n  body 0 []\n",
                   want, tail);
    free(want);
    /* The switched connection is the new protocol's: kind and count. */
    hd_conn *c = conn_new();
    feeds(c, "GET /switch HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_ptr_equal(c->ops, &test_ops);
    assert_int_equal(c->kind, HD_CONN_WS);
    assert_int_equal(net.nws, 1);
    assert_int_equal(hd_http_busy(c), 0);
    free(take_out(c));
    conn_end(c);
    assert_int_equal(net.nws, 0);
}

/* The contract (http.h) lets the callback switch protocols on any
 * request; one llhttp did not flag as an upgrade must hand the bytes after
 * it to the new protocol too, not go on parsing them as HTTP. */
static void test_switch_without_upgrade_header(void **state)
{
    (void)state;
    const char *tail = "GET /x HTTP/1.1\r\n\r\n";
    char in[256];
    snprintf(in, sizeof in, "GET /switch HTTP/1.1\r\n\r\n%s", tail);
    expect_session(in, "GET /switch path=/switch query=none keep_alive=1 upgrade=0\n  body 0 []\n",
                   "SWITCHED\n", tail);
}

/* hd_http_busy: 1 from the first byte of a request until it is complete. */
static void test_busy(void **state)
{
    (void)state;
    hd_conn *c = conn_new();
    assert_int_equal(hd_http_busy(c), 0); /* nothing read yet */
    feeds(c, "POST /silent HTTP/1.1\r\nContent-Length: 3\r\n\r\nab");
    assert_int_equal(hd_http_busy(c), 1);
    feeds(c, "c");
    assert_int_equal(hd_http_busy(c), 0);
    assert_int_equal(nreq, 1);
    feeds(c, "G");
    assert_int_equal(hd_http_busy(c), 1);
    feeds(c, "ET /silent HTTP/1.1\r\n\r\n");
    assert_int_equal(hd_http_busy(c), 0);
    conn_end(c);
}

/* hd_http_header: case-insensitive names, the first of repeated ones. */
static void test_header_lookup(void **state)
{
    (void)state;
    hd_http_req r;
    memset(&r, 0, sizeof r);
    /* By hand: the same layout the parser makes. */
    static const char hb[] = "X-One\0" "1\0" "x-two\0" "two\0" "X-ONE\0" "again";
    r.hbuf.p = (char *)hb;
    r.hbuf.len = sizeof hb;
    hd_hdr hs[3] = {{0, 5, 6, 1}, {8, 5, 14, 3}, {18, 5, 24, 5}};
    r.nh = 3;
    r.h = hs;
    size_t len = 99;
    const char *v = hd_http_header(&r, "x-one", &len);
    assert_non_null(v);
    assert_int_equal(len, 1);
    assert_memory_equal(v, "1", 1);
    v = hd_http_header(&r, "X-TWO", &len);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "two", 3);
    assert_null(hd_http_header(&r, "x-on", &len));
    assert_null(hd_http_header(&r, "x-three", NULL));
}

static int qp(const char *query, const char *key, char *out, size_t outlen)
{
    hd_http_req r;
    memset(&r, 0, sizeof r);
    r.query = query;
    r.query_len = query ? strlen(query) : 0;
    memset(out, '#', outlen);
    return hd_http_query_param(&r, key, out, outlen);
}

/* hd_http_query_param: decoded keys and values, bare keys, the first of
 * repeated keys, truncation. */
static void test_query_param(void **state)
{
    (void)state;
    const char *q = "a=1&b=x%20y+z&&c&%61b=2&a=again&e=&vsn=2.0.0&pct=%zz%4";
    char out[32];
    assert_int_equal(qp(q, "a", out, sizeof out), 1);
    assert_string_equal(out, "1");
    assert_int_equal(qp(q, "b", out, sizeof out), 1);
    assert_string_equal(out, "x y z");
    assert_int_equal(qp(q, "c", out, sizeof out), 1);
    assert_string_equal(out, "");
    assert_int_equal(qp(q, "ab", out, sizeof out), 1); /* the key decodes too */
    assert_string_equal(out, "2");
    assert_int_equal(qp(q, "e", out, sizeof out), 1);
    assert_string_equal(out, "");
    assert_int_equal(qp(q, "vsn", out, sizeof out), 1);
    assert_string_equal(out, "2.0.0");
    assert_int_equal(qp(q, "pct", out, sizeof out), 1); /* malformed escapes stay */
    assert_string_equal(out, "%zz%4");
    assert_int_equal(qp(q, "d", out, sizeof out), 0);
    assert_int_equal(qp(q, "A", out, sizeof out), 0); /* keys are case-sensitive */
    assert_int_equal(qp(NULL, "a", out, sizeof out), 0);
    assert_int_equal(qp("", "a", out, sizeof out), 0);
    /* Truncated to outlen - 1. */
    assert_int_equal(qp("k=abcdef", "k", out, 4), 1);
    assert_string_equal(out, "abc");
    assert_int_equal(qp("k=abc", "k", out, 4), 1);
    assert_string_equal(out, "abc");
}

/* The value is decoded, then truncated (http.h): an escaped value whose
 * decoded form fits is not cut. */
static void test_query_param_truncates_decoded(void **state)
{
    (void)state;
    char out[4];
    assert_int_equal(qp("k=%41%42%43", "k", out, sizeof out), 1);
    assert_string_equal(out, "ABC");
}

/* The transport's close on an HTTP connection: no more input, and a
 * graceful finish after what is queued. */
static void test_close_op(void **state)
{
    (void)state;
    hd_conn *c = conn_new();
    feeds(c, "GET /a HTTP/1.1\r\n\r\n");
    hd_conn_shut(c, 1001, "going away");
    assert_int_equal(c->flags & (HD_CF_NO_INPUT | HD_CF_FINISH), HD_CF_NO_INPUT | HD_CF_FINISH);
    feeds(c, "GET /b HTTP/1.1\r\n\r\n");
    char *got = take_out(c);
    char *want = ok("/a", "keep-alive");
    assert_string_equal(got, want);
    assert_int_equal(nreq, 1);
    free(got);
    free(want);
    conn_end(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_request_fields, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_pipelined_order, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_limits, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_blank_in_header_name, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_limits_boundaries, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_keep_alive, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_closing, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_head, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_upgrade_declined, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_upgrade_switch, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_switch_without_upgrade_header, setup_http,
                                        teardown_http),
        cmocka_unit_test_setup_teardown(test_busy, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_header_lookup, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_query_param, setup_http, teardown_http),
        cmocka_unit_test_setup_teardown(test_query_param_truncates_decoded, setup_http,
                                        teardown_http),
        cmocka_unit_test_setup_teardown(test_close_op, setup_http, teardown_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
