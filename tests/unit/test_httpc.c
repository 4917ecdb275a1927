/* The HTTP client (core/httpc.c) against a scripted server on 127.0.0.1:
 * the exact request bytes, responses of each framing, the pool (reuse,
 * its cap, idle close, the retry of a request on a connection the server
 * dropped), deadlines, errors, cancels at each stage and freeing with
 * calls in flight; and the response parser alone, fed split at every
 * byte. Each loop test ends with hd_httpc_free, the server closed and
 * uv_loop_close() == 0: nothing leaked. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* (for its loop, ticker and RUN_UNTIL; no server of its is started) */
#include "harness.h"

#include "err.h"
#include "httpc.h"

#include <strings.h>

static hd_httpc *hc;
static int freed;

/* ---- a scripted server ------------------------------------------------------------------ */

typedef struct sconn {
    uv_tcp_t tcp;
    int id;                      /* accept number, from 1 */
    int closing, eof;            /* closed by us; the client closed */
    int nreq;                    /* complete requests received */
    hd_str in;                   /* bytes not yet taken as a request */
} sconn;

#define MAX_REQS 64
static struct {
    uv_tcp_t lis;
    int port;
    int accepts, open, max_open, eofs;
    size_t received;             /* bytes, all connections */
    size_t pause_at;             /* stop reading once this many came (0: never) */
    hd_str reqs[MAX_REQS];       /* every complete request, in arrival order */
    sconn *req_conn[MAX_REQS];
    int nreqs;
    const char *reply;           /* the answer to every request; NULL: held */
    int close_after;             /* close once the reply is written */
    /* when set, decides instead: request i (0-based) on c */
    void (*on_request)(sconn *c, int i);
    sconn *conns[MAX_REQS];
    int held[MAX_REQS];          /* requests held, waiting for release() */
    int nheld;
} S;

typedef struct swr {
    uv_write_t w;
    sconn *c;
    int close;
    char data[];
} swr;

static void srv_freed(uv_handle_t *h)
{
    sconn *c = h->data;
    hd_str_free(&c->in);
    free(c);
}

static void srv_close(sconn *c)
{
    if (c->closing) return;
    c->closing = 1;
    S.open--;
    for (int i = 0; i < MAX_REQS; i++)
        if (S.conns[i] == c) S.conns[i] = NULL;
    for (int i = 0; i < S.nreqs; i++)
        if (S.req_conn[i] == c) S.req_conn[i] = NULL;
    uv_close((uv_handle_t *)&c->tcp, srv_freed);
}

static void srv_written(uv_write_t *w, int status)
{
    swr *x = (swr *)w;
    if (x->close && status == 0) srv_close(x->c);
    free(x);
}

/* Writes n bytes to c; close: then closes it. */
static void srv_send(sconn *c, const char *p, size_t n, int close)
{
    if (!c || c->closing) return;
    swr *x = malloc(sizeof *x + n);
    memcpy(x->data, p, n);
    x->c = c;
    x->close = close;
    uv_buf_t b = uv_buf_init(x->data, (unsigned)n);
    assert_int_equal(uv_write(&x->w, (uv_stream_t *)&c->tcp, &b, 1, srv_written), 0);
}

static void srv_sends(sconn *c, const char *s, int close) { srv_send(c, s, strlen(s), close); }

/* Length of the complete request at the start of p, or 0. */
static size_t request_len(const char *p, size_t n)
{
    const char *e = memmem(p, n, "\r\n\r\n", 4);
    if (!e) return 0;
    size_t head = (size_t)(e - p) + 4, cl = 0;
    for (const char *q = p; q + 17 < p + head; q++)
        if (!strncasecmp(q, "\r\nContent-Length:", 17)) cl = strtoul(q + 17, NULL, 10);
    return head + cl <= n ? head + cl : 0;
}

static void srv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    sconn *c = s->data;
    if (n < 0) {
        c->eof = 1;
        S.eofs++;
        srv_close(c);
    } else if (n > 0) {
        S.received += (size_t)n;
        hd_str_add(&c->in, b->base, (size_t)n);
        if (S.pause_at && S.received >= S.pause_at) uv_read_stop(s);
        size_t len;
        while (!c->closing && (len = request_len(c->in.p, c->in.len))) {
            int i = S.nreqs++;
            assert_true(i < MAX_REQS);
            hd_str_add(&S.reqs[i], c->in.p, len);
            S.req_conn[i] = c;
            memmove(c->in.p, c->in.p + len, c->in.len - len);
            c->in.len -= len;
            c->nreq++;
            if (S.on_request) S.on_request(c, i);
            else if (S.reply) srv_sends(c, S.reply, S.close_after);
            else S.held[S.nheld++] = i;
        }
    }
    free(b->base);
}

static void srv_accept(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    sconn *c = calloc(1, sizeof *c);
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    c->id = ++S.accepts;
    if (++S.open > S.max_open) S.max_open = S.open;
    for (int i = 0; i < MAX_REQS; i++)
        if (!S.conns[i]) {
            S.conns[i] = c;
            break;
        }
    uv_read_start((uv_stream_t *)&c->tcp, cli_alloc, srv_read); /* (harness.h's: malloc) */
}

/* Answers held request i (its connection may have gone: then nothing). */
static void release(int i, const char *reply)
{
    for (int j = 0; j < S.nheld; j++)
        if (S.held[j] == i) {
            memmove(&S.held[j], &S.held[j + 1], (size_t)(S.nheld - j - 1) * sizeof S.held[0]);
            S.nheld--;
            break;
        }
    srv_sends(S.req_conn[i], reply, 0);
}

static void on_port_closed(uv_handle_t *h) { *(int *)h->data = 1; }

/* A port on 127.0.0.1 with nothing listening. */
static int free_port(void)
{
    uv_tcp_t t;
    struct sockaddr_in a;
    struct sockaddr_storage b;
    int len = sizeof b;
    uv_tcp_init(&loop, &t);
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&t, (struct sockaddr *)&a, 0), 0);
    uv_tcp_getsockname(&t, (struct sockaddr *)&b, &len);
    int closed = 0;
    t.data = &closed;
    uv_close((uv_handle_t *)&t, on_port_closed);
    RUN_UNTIL(closed);
    return ntohs(((struct sockaddr_in *)&b)->sin_port);
}

/* ---- the client's side ------------------------------------------------------------------ */

typedef struct result {
    int called, err, status, order;
    char msg[320];
    hd_str body;                 /* the body */
    hd_str hdrs;                 /* "name: value\n" for each header */
    void (*then)(struct result *r); /* run inside the callback */
    hd_httpc_call *other;        /* for then */
} result;

static result R[16];
static int completions;

static void on_done(void *ud, int err, const char *msg, const hd_httpc_res *res)
{
    result *r = ud;
    r->called++;
    r->err = err;
    r->order = ++completions;
    if (err) {
        assert_null(res);
        assert_non_null(msg);
        snprintf(r->msg, sizeof r->msg, "%s", msg);
    } else {
        assert_non_null(res);
        r->status = res->status;
        assert_int_equal(res->body[res->body_len], 0);
        hd_str_add(&r->body, res->body, res->body_len);
        for (size_t i = 0; i < res->nheaders; i++) {
            const hd_httpc_hdr *h = &res->headers[i];
            for (size_t j = 0; j < h->name_len; j++)
                assert_false(h->name[j] >= 'A' && h->name[j] <= 'Z');
            hd_str_printf(&r->hdrs, "%.*s: %.*s\n", (int)h->name_len, h->name, (int)h->value_len,
                          h->value);
        }
    }
    if (r->then) r->then(r);
}

static void client(uint32_t pool, uint32_t max_in_flight, uint32_t timeout_ms, uint32_t max_resp,
                   uint32_t idle_ms)
{
    hd_httpc_opts o = {pool, max_in_flight, timeout_ms, max_resp, idle_ms};
    hc = hd_httpc_new(&loop, &o);
    assert_non_null(hc);
}

static const hd_httpc_stats *st(void) { return hd_httpc_stats_of(hc); }

/* Starts a request to url; NULL with the reason in err when refused. */
static hd_httpc_call *start_url(const char *method, const char *url, const hd_httpc_hdr *h,
                                size_t nh, const char *body, uint32_t timeout_ms, result *r,
                                char *err, size_t errlen)
{
    hd_httpc_req q = {.method = method, .url = url, .url_len = url ? strlen(url) : 0,
                      .headers = h, .nheaders = nh, .body = body,
                      .body_len = body ? strlen(body) : 0, .timeout_ms = timeout_ms};
    hd_httpc_call *k = hd_httpc_request(hc, &q, on_done, r, err, errlen);
    assert_int_equal(r->called, 0); /* never from inside hd_httpc_request */
    return k;
}

/* Starts a request for path on the server; it must be accepted. */
static hd_httpc_call *start(const char *method, const char *path, const hd_httpc_hdr *h, size_t nh,
                            const char *body, uint32_t timeout_ms, result *r)
{
    char url[256], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", S.port, path);
    hd_httpc_call *k = start_url(method, url, h, nh, body, timeout_ms, r, err, sizeof err);
    if (!k) fail_msg("request refused: %s", err);
    return k;
}

static hd_httpc_call *get(const char *path, result *r)
{
    return start("GET", path, NULL, 0, NULL, 0, r);
}

static void expect_ok(result *r, int status, const char *body)
{
    RUN_UNTIL(r->called);
    if (r->err) fail_msg("request failed: %s", r->msg);
    assert_int_equal(r->called, 1);
    assert_int_equal(r->status, status);
    assert_string_equal(r->body.p ? r->body.p : "", body);
}

static void expect_error(result *r, int err, const char *msg)
{
    RUN_UNTIL(r->called);
    assert_int_equal(r->called, 1);
    assert_int_equal(r->err, err);
    assert_string_equal(r->msg, msg);
}

/* Request i as the server received it, with the port in it as "PORT". */
static char *request_seen(int i)
{
    static char buf[4096];
    char port[16];
    snprintf(port, sizeof port, "%d", S.port);
    assert_true(i < S.nreqs);
    const char *p = S.reqs[i].p;
    size_t o = 0;
    while (*p && o < sizeof buf - 8) {
        if (!strncmp(p, port, strlen(port))) {
            memcpy(buf + o, "PORT", 4);
            o += 4;
            p += strlen(port);
        } else {
            buf[o++] = *p++;
        }
    }
    buf[o] = 0;
    return buf;
}

static void on_freed(void *ud) { *(int *)ud += 1; }

static int setup_httpc(void **state)
{
    (void)state;
    memset(&S, 0, sizeof S);
    memset(R, 0, sizeof R);
    completions = 0;
    freed = 0;
    hc = NULL;
    assert_int_equal(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    struct sockaddr_in a;
    struct sockaddr_storage b;
    int len = sizeof b;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&loop, &S.lis);
    assert_int_equal(uv_tcp_bind(&S.lis, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&S.lis, 128, srv_accept), 0);
    uv_tcp_getsockname(&S.lis, (struct sockaddr *)&b, &len);
    S.port = ntohs(((struct sockaddr_in *)&b)->sin_port);
    S.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    return 0;
}

static int teardown_httpc(void **state)
{
    (void)state;
    if (hc) {
        hd_httpc_free(hc, on_freed, &freed);
        RUN_UNTIL(freed);
        assert_int_equal(freed, 1);
    }
    for (int i = 0; i < MAX_REQS; i++)
        if (S.conns[i]) srv_close(S.conns[i]);
    uv_close((uv_handle_t *)&S.lis, NULL);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0); /* nothing leaked */
    for (int i = 0; i < MAX_REQS; i++) hd_str_free(&S.reqs[i]);
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        assert_true(R[i].called <= 1);
        hd_str_free(&R[i].body);
        hd_str_free(&R[i].hdrs);
    }
    return 0;
}

/* ---- requests and responses ------------------------------------------------------------- */

static void test_get(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 0);
    S.reply = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Thing:  v  \r\nSET-COOKIE: a=1\r\n"
              "Content-Length: 5\r\n\r\nhello";
    hd_httpc_hdr h[] = {{"X-Req", "1", 5, 1}, {"Accept", "*/*", 6, 3}};
    start("GET", "/a/b?c=d#frag", h, 2, NULL, 0, &R[0]);
    expect_ok(&R[0], 200, "hello");
    assert_string_equal(request_seen(0),
                        "GET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nX-Req: 1\r\n"
                        "Accept: */*\r\nConnection: keep-alive\r\n\r\n");
    assert_string_equal(R[0].hdrs.p, "content-type: text/plain\nx-thing: v\nset-cookie: a=1\n"
                                     "content-length: 5\n");
    /* No path: "/"; a query alone: "/?q". */
    start("GET", "", NULL, 0, NULL, 0, &R[1]);
    expect_ok(&R[1], 200, "hello");
    start("GET", "?q=1", NULL, 0, NULL, 0, &R[2]);
    expect_ok(&R[2], 200, "hello");
    assert_string_equal(request_seen(1),
                        "GET / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nConnection: keep-alive\r\n\r\n");
    assert_string_equal(
        request_seen(2),
        "GET /?q=1 HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(st()->requests, 3);
    assert_int_equal(st()->errors, 0);
    assert_int_equal(st()->in_flight, 0);
}

static void test_post(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 0);
    S.reply = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    hd_httpc_hdr h[] = {{"Content-Type", "application/json", 12, 16}};
    start("POST", "/p", h, 1, "{\"a\":1}", 0, &R[0]);
    expect_ok(&R[0], 201, "");
    assert_string_equal(
        request_seen(0),
        "POST /p HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Type: application/json\r\n"
        "Content-Length: 7\r\nConnection: keep-alive\r\n\r\n{\"a\":1}");
    /* PUT without a body says so; the caller's Host replaces the URL's. */
    hd_httpc_hdr host[] = {{"Host", "backend.example", 4, 15}};
    start("PUT", "/q", host, 1, NULL, 0, &R[1]);
    expect_ok(&R[1], 201, "");
    assert_string_equal(request_seen(1),
                        "PUT /q HTTP/1.1\r\nHost: backend.example\r\nContent-Length: 0\r\n"
                        "Connection: keep-alive\r\n\r\n");
    /* A DELETE with an empty body still sends its length. */
    hd_httpc_req q = {"DELETE", NULL, 0, NULL, 0, "", 0, 0};
    char url[64], err[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/d", S.port);
    q.url = url;
    q.url_len = strlen(url);
    assert_non_null(hd_httpc_request(hc, &q, on_done, &R[2], err, sizeof err));
    expect_ok(&R[2], 201, "");
    assert_string_equal(request_seen(2),
                        "DELETE /d HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Length: 0\r\n"
                        "Connection: keep-alive\r\n\r\n");
    assert_int_equal(S.accepts, 1);
}

static void test_chunked(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 0);
    S.reply =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n"
        "0\r\nX-Trailer: t\r\n\r\n";
    get("/", &R[0]);
    expect_ok(&R[0], 200, "hello world");
    get("/", &R[1]);
    expect_ok(&R[1], 200, "hello world");
    assert_int_equal(S.accepts, 1); /* chunked keeps the connection */
}

static void test_until_close(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 0);
    S.reply = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it";
    S.close_after = 1;
    get("/", &R[0]);
    expect_ok(&R[0], 200, "all of it");
    get("/", &R[1]);
    expect_ok(&R[1], 200, "all of it");
    assert_int_equal(S.accepts, 2);
    assert_int_equal(st()->reused, 0);
}

static void test_interim_and_head(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 0);
    S.reply = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    get("/", &R[0]);
    expect_ok(&R[0], 200, "ok");
    assert_string_equal(R[0].hdrs.p, "content-length: 2\n");
    /* HEAD: no body whatever Content-Length says, and the connection stays. */
    S.reply = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    start("HEAD", "/", NULL, 0, NULL, 0, &R[1]);
    expect_ok(&R[1], 200, "");
    S.reply = "HTTP/1.1 204 No Content\r\n\r\n";
    get("/", &R[2]);
    expect_ok(&R[2], 204, "");
    assert_int_equal(S.accepts, 1);
}

/* ---- the pool --------------------------------------------------------------------------- */

static void test_keepalive(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 0);
    get("/1", &R[0]);
    expect_ok(&R[0], 200, "ok");
    get("/2", &R[1]);
    expect_ok(&R[1], 200, "ok");
    assert_int_equal(S.accepts, 1);
    assert_int_equal(S.req_conn[0], S.req_conn[1]);
    assert_int_equal(st()->connects, 1);
    assert_int_equal(st()->reused, 1);
    assert_int_equal(st()->open_conns, 1);
    /* Connection: close, or HTTP/1.0 without keep-alive: not reused. */
    S.reply = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    get("/3", &R[2]);
    expect_ok(&R[2], 200, "ok");
    RUN_UNTIL(S.eofs == 1);
    S.reply = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    get("/4", &R[3]);
    expect_ok(&R[3], 200, "ok");
    RUN_UNTIL(S.eofs == 2);
    S.reply = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
    get("/5", &R[4]);
    expect_ok(&R[4], 200, "ok");
    get("/6", &R[5]);
    expect_ok(&R[5], 200, "ok");
    assert_int_equal(S.accepts, 3);
    /* Bytes after the response: it is delivered, the connection closed. */
    S.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK";
    get("/7", &R[6]);
    expect_ok(&R[6], 200, "ok");
    RUN_UNTIL(S.eofs == 3);
    S.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    get("/8", &R[7]);
    expect_ok(&R[7], 200, "ok");
    assert_int_equal(S.accepts, 4);
}

static void test_pool_cap(void **state)
{
    (void)state;
    client(2, 16, 5000, 0, 0);
    S.reply = NULL; /* held */
    char path[8];
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "/%d", i + 1);
        get(path, &R[i]);
    }
    assert_int_equal(st()->open_conns, 2);
    for (int i = 0; i < 5; i++) {
        /* Two requests held at the server, the rest still waiting. */
        RUN_UNTIL(S.nheld == (i < 3 ? 2 : 5 - i));
        assert_true(S.max_open <= 2);
        assert_int_equal(S.nreqs, i + S.nheld);
        snprintf(path, sizeof path, "/%d ", i + 1);
        assert_non_null(strstr(S.reqs[i].p, path)); /* FIFO */
        release(i, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        expect_ok(&R[i], 200, "ok");
        assert_int_equal(R[i].order, i + 1);
    }
    assert_int_equal(S.accepts, 2);
    assert_int_equal(S.max_open, 2);
    assert_int_equal(st()->reused, 3);
}

static void test_idle_close(void **state)
{
    (void)state;
    client(4, 16, 2000, 0, 40);
    get("/", &R[0]);
    expect_ok(&R[0], 200, "ok");
    /* Closed by us after idle_ms. */
    RUN_UNTIL(S.eofs == 1);
    assert_int_equal(st()->open_conns, 0);
    get("/", &R[1]);
    expect_ok(&R[1], 200, "ok");
    assert_int_equal(S.accepts, 2);
    /* Closed by the server while idle: seen, and the next one is new. */
    srv_close(S.req_conn[1]);
    RUN_UNTIL(st()->open_conns == 0);
    get("/", &R[2]);
    expect_ok(&R[2], 200, "ok");
    assert_int_equal(S.accepts, 3);
    assert_int_equal(st()->reused, 0);
}

/* The server takes a request on a kept connection and closes it without
 * answering, as one that dropped it as idle would. */
static void close_second(sconn *c, int i)
{
    (void)i;
    if (c->nreq == 2) srv_close(c);
    else srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0);
}

static void close_always(sconn *c, int i)
{
    (void)i;
    srv_close(c);
}

static void test_retry_stale(void **state)
{
    (void)state;
    client(1, 16, 2000, 0, 0);
    S.on_request = close_second;
    get("/1", &R[0]);
    expect_ok(&R[0], 200, "ok");
    get("/2", &R[1]);
    expect_ok(&R[1], 200, "ok");
    assert_int_equal(S.accepts, 2);
    assert_int_equal(S.nreqs, 3);
    assert_string_equal(S.reqs[1].p, S.reqs[2].p); /* the same request again */
    assert_int_equal(st()->connects, 2);
    /* Only once: the fresh connection closing too is the call's error. */
    S.on_request = close_always;
    get("/3", &R[2]);
    expect_error(&R[2], HD_ECLOSED, "connection closed before the response");
    assert_int_equal(S.accepts, 3);
    assert_int_equal(S.nreqs, 5);
    /* A new connection closing before the response is not retried. */
    get("/4", &R[3]);
    expect_error(&R[3], HD_ECLOSED, "connection closed before the response");
    assert_int_equal(S.accepts, 4);
    assert_int_equal(S.nreqs, 6);
    /* Nor is one closing during the response. */
    S.on_request = NULL;
    S.reply = "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort";
    S.close_after = 1;
    get("/5", &R[4]);
    expect_error(&R[4], HD_ECLOSED, "connection closed during the response");
    assert_int_equal(st()->errors, 3);
}

/* ---- errors ----------------------------------------------------------------------------- */

static void test_timeout(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    S.reply = NULL;
    get("/", &R[0]);
    start("GET", "/", NULL, 0, NULL, 60, &R[1]); /* waits in the queue, times out there */
    expect_error(&R[1], UV_ETIMEDOUT, "timeout");
    assert_int_equal(R[0].called, 0);
    assert_int_equal(S.nreqs, 1);
    start("GET", "/", NULL, 0, NULL, 300, &R[2]); /* queued behind the first again */
    release(0, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    expect_ok(&R[0], 200, "ok");
    /* The third got the connection and the server never answers it. */
    expect_error(&R[2], UV_ETIMEDOUT, "timeout");
    RUN_UNTIL(S.eofs == 1); /* its connection closed */
    assert_int_equal(st()->timeouts, 2);
    assert_int_equal(st()->errors, 2);
    assert_int_equal(st()->open_conns, 0);
}

static void test_refused(void **state)
{
    (void)state;
    client(1, 16, 2000, 0, 0);
    char url[64], err[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", free_port());
    assert_non_null(start_url("GET", url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
    assert_non_null(start_url("GET", url, NULL, 0, NULL, 0, &R[1], err, sizeof err));
    expect_error(&R[0], UV_ECONNREFUSED, "connection refused");
    expect_error(&R[1], UV_ECONNREFUSED, "connection refused");
    assert_int_equal(st()->connects, 0);
    assert_int_equal(st()->open_conns, 0);
}

static void test_malformed(void **state)
{
    (void)state;
    client(1, 16, 2000, 1024, 0);
    S.reply = "SPDY/3 hello\r\n\r\n";
    get("/", &R[0]);
    RUN_UNTIL(R[0].called);
    assert_int_equal(R[0].err, HD_EPROTO);
    assert_true(!strncmp(R[0].msg, "malformed response: ", 20));
    RUN_UNTIL(S.eofs == 1);
    S.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok";
    get("/", &R[1]);
    RUN_UNTIL(R[1].called);
    assert_int_equal(R[1].err, HD_EPROTO);
    S.reply =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    get("/", &R[2]);
    RUN_UNTIL(R[2].called);
    assert_int_equal(R[2].err, HD_EPROTO);
    /* Too many headers. */
    static char many[4096];
    size_t n = (size_t)snprintf(many, sizeof many, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i <= HD_HTTPC_MAX_HEADERS; i++)
        n += (size_t)snprintf(many + n, sizeof many - n, "h%d: v\r\n", i);
    snprintf(many + n, sizeof many - n, "\r\n");
    assert_true(strlen(many) < 1024);
    S.reply = many;
    get("/", &R[3]);
    expect_error(&R[3], HD_EPROTO, "malformed response: too many headers");
}

static void test_too_large(void **state)
{
    (void)state;
    client(1, 16, 2000, 256, 0);
    static char big[2048];
    snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n%01000d", 0);
    S.reply = big;
    get("/", &R[0]);
    expect_error(&R[0], HD_ETOOBIG, "response too large");
    /* Chunked, the limit reached by the body as it comes. */
    static char chunks[4096];
    size_t n = (size_t)snprintf(chunks, sizeof chunks,
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 20; i++)
        n += (size_t)snprintf(chunks + n, sizeof chunks - n, "10\r\n0123456789abcdef\r\n");
    snprintf(chunks + n, sizeof chunks - n, "0\r\n\r\n");
    S.reply = chunks;
    get("/", &R[1]);
    expect_error(&R[1], HD_ETOOBIG, "response too large");
    /* The headers alone over it. */
    static char head[1024];
    snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nX-Big: %0300d\r\nContent-Length: 0\r\n\r\n", 0);
    S.reply = head;
    get("/", &R[2]);
    expect_error(&R[2], HD_ETOOBIG, "response too large");
    /* Exactly at the limit: fine. */
    static char exact[512];
    const char *h = "HTTP/1.1 200 OK\r\nContent-Length: 216\r\n\r\n"; /* 40 bytes */
    snprintf(exact, sizeof exact, "%s%0216d", h, 0);
    assert_int_equal(strlen(exact), 256);
    S.reply = exact;
    get("/", &R[3]);
    RUN_UNTIL(R[3].called);
    assert_int_equal(R[3].err, 0);
    assert_int_equal(R[3].body.len, 216);
    RUN_UNTIL(S.eofs == 3); /* each too-large response closed its connection */
}

static void test_localhost(void **state)
{
    (void)state;
    client(1, 16, 2000, 0, 0);
    char url[64], err[128];
    snprintf(url, sizeof url, "http://LocalHost:%d/x", S.port);
    assert_non_null(start_url("GET", url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
    expect_ok(&R[0], 200, "ok");
    assert_string_equal(
        request_seen(0),
        "GET /x HTTP/1.1\r\nHost: LocalHost:PORT\r\nConnection: keep-alive\r\n\r\n");
}

static void test_bad_requests(void **state)
{
    (void)state;
    client(1, 16, 2000, 0, 0);
    static const struct {
        const char *url, *msg;
    } urls[] = {
        {"https://127.0.0.1/", "only http:// URLs are supported"},
        {"ftp://127.0.0.1/", "only http:// URLs are supported"},
        {"127.0.0.1:80/", "only http:// URLs are supported"},
        {"", "malformed URL: empty"},
        {"http://", "malformed URL: no host"},
        {"http:///path", "malformed URL: no host"},
        {"http://:80/", "malformed URL: no host"},
        {"http://127.0.0.1:/", "malformed URL: bad port"},
        {"http://127.0.0.1:0/", "malformed URL: bad port"},
        {"http://127.0.0.1:65536/", "malformed URL: bad port"},
        {"http://127.0.0.1:8o/", "malformed URL: bad port"},
        {"http://127.0.0.1:1234567/", "malformed URL: bad port"},
        {"http://127.0.0.1/a b",
         "malformed URL: a space, control or non-ASCII byte (percent-encode it)"},
        {"http://127.0.0.1 /",
         "malformed URL: a space, control or non-ASCII byte (percent-encode it)"},
        {"http://a\r\nb/", "malformed URL: a space, control or non-ASCII byte (percent-encode it)"},
        {"http://user:pw@127.0.0.1/", "malformed URL: user info is not supported"},
        {"http://[::1/", "malformed URL: bad IPv6 address"},
        {"http://[zz]/", "malformed URL: bad IPv6 address"},
        {"http://ex%41mple/", "malformed URL: bad character in the host"},
        {"http://[::1]x/", "malformed URL: bad host"},
    };
    char err[256];
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        err[0] = 0;
        assert_null(start_url("GET", urls[i].url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
        if (strcmp(err, urls[i].msg))
            fail_msg("%s: got \"%s\", expected \"%s\"", urls[i].url, err, urls[i].msg);
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", S.port);
    assert_null(start_url("GE T", url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
    assert_string_equal(err, "bad method");
    assert_null(start_url("", url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
    assert_string_equal(err, "bad method");
    assert_null(start_url(NULL, url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
    assert_string_equal(err, "bad method");
    assert_null(start_url("CONNECT", url, NULL, 0, NULL, 0, &R[0], err, sizeof err));
    assert_string_equal(err, "method CONNECT is not supported");
    static const struct {
        hd_httpc_hdr h;
        const char *msg;
    } hdrs[] = {
        {{"X A", "1", 3, 1}, "bad request header name"},
        {{"", "1", 0, 1}, "bad request header name"},
        {{"X:A", "1", 3, 1}, "bad request header name"},
        {{"X-A", "1\r\nEvil: 1", 3, 10}, "bad value of request header X-A (control character)"},
        {{"X-A", "1\n", 3, 2}, "bad value of request header X-A (control character)"},
        {{"X-A", "a\0b", 3, 3}, "bad value of request header X-A (control character)"},
        {{"Content-Length", "5", 14, 1},
         "request header Content-Length is not allowed (herald sets it)"},
        {{"transfer-encoding", "chunked", 17, 7},
         "request header transfer-encoding is not allowed (herald sets it)"},
        {{"Connection", "close", 10, 5},
         "request header Connection is not allowed (herald sets it)"},
    };
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        assert_null(start_url("GET", url, &hdrs[i].h, 1, NULL, 0, &R[0], err, sizeof err));
        assert_string_equal(err, hdrs[i].msg);
    }
    /* A tab in a value is fine, and an IPv6 literal parses (nothing listens there). */
    hd_httpc_hdr tab = {"X-A", "a\tb", 3, 3};
    assert_non_null(start_url("GET", url, &tab, 1, NULL, 0, &R[0], err, sizeof err));
    expect_ok(&R[0], 200, "ok");
    assert_int_equal(st()->requests, 1);
    assert_int_equal(S.nreqs, 1);
}

static void test_max_in_flight(void **state)
{
    (void)state;
    client(4, 2, 5000, 0, 0);
    S.reply = NULL;
    get("/", &R[0]);
    get("/", &R[1]);
    char url[64], err[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", S.port);
    assert_null(start_url("GET", url, NULL, 0, NULL, 0, &R[2], err, sizeof err));
    assert_string_equal(err, "too many requests in flight (scripts.http.max_in_flight)");
    assert_int_equal(st()->in_flight, 2);
    RUN_UNTIL(S.nheld == 2);
    release(S.held[0], "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    RUN_UNTIL(R[0].called + R[1].called == 1);
    assert_int_equal(st()->in_flight, 1);
    get("/", &R[3]);
    assert_int_equal(st()->requests, 3);
}

/* ---- cancels and freeing ---------------------------------------------------------------- */

static void test_cancel_queued(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    S.reply = NULL;
    get("/1", &R[0]);
    hd_httpc_call *k = get("/2", &R[1]);
    get("/3", &R[2]);
    RUN_UNTIL(S.nheld == 1);
    hd_httpc_cancel(k);
    assert_int_equal(st()->in_flight, 2);
    release(0, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    expect_ok(&R[0], 200, "ok");
    RUN_UNTIL(S.nheld == 1);
    assert_non_null(strstr(S.reqs[1].p, "/3 "));
    release(1, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    expect_ok(&R[2], 200, "ok");
    assert_int_equal(R[1].called, 0);
    assert_int_equal(S.accepts, 1);
}

static void test_cancel_connecting(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    /* Resolving (a name), then connecting (an address): the connection
     * goes, nothing is sent, the next request starts afresh. */
    char url[64], err[128];
    snprintf(url, sizeof url, "http://localhost:%d/", S.port);
    hd_httpc_call *k = start_url("GET", url, NULL, 0, NULL, 0, &R[0], err, sizeof err);
    assert_non_null(k);
    assert_int_equal(st()->open_conns, 1);
    hd_httpc_cancel(k);
    assert_int_equal(st()->open_conns, 0);
    assert_int_equal(st()->in_flight, 0);
    k = get("/", &R[1]);
    hd_httpc_cancel(k);
    assert_int_equal(st()->open_conns, 0);
    get("/after", &R[2]);
    expect_ok(&R[2], 200, "ok");
    assert_int_equal(S.nreqs, 1);
    assert_int_equal(R[0].called + R[1].called, 0);
}

static void test_cancel_writing(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    /* A body larger than the socket buffers, and a server that stops
     * reading: the write is still in progress when the call goes. */
    size_t n = 32u << 20;
    char *body = malloc(n + 1);
    memset(body, 'x', n);
    body[n] = 0;
    S.pause_at = 65536;
    hd_httpc_call *k = start("POST", "/", NULL, 0, body, 0, &R[0]);
    free(body); /* copied */
    RUN_UNTIL(S.received >= 65536);
    hd_httpc_cancel(k);
    assert_int_equal(st()->open_conns, 0);
    assert_int_equal(st()->in_flight, 0);
    assert_int_equal(R[0].called, 0);
}

static void test_cancel_reading(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    S.reply = NULL;
    hd_httpc_call *k = get("/", &R[0]);
    RUN_UNTIL(S.nheld == 1);
    hd_httpc_cancel(k);
    RUN_UNTIL(S.eofs == 1);
    /* Mid-response. */
    k = get("/", &R[1]);
    RUN_UNTIL(S.nreqs == 2);
    uint64_t before = st()->bytes_read;
    const char *part = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc";
    release(1, part);
    RUN_UNTIL(st()->bytes_read == before + strlen(part));
    hd_httpc_cancel(k);
    RUN_UNTIL(S.eofs == 2);
    assert_int_equal(R[0].called + R[1].called, 0);
    assert_int_equal(st()->in_flight, 0);
    assert_int_equal(st()->open_conns, 0);
    assert_int_equal(S.accepts, 2); /* a cancelled call's connection is never reused */
}

static void test_free_in_flight(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    S.reply = NULL;
    char url[64], err[128];
    int port = free_port();
    get("/busy", &R[0]);   /* reading */
    get("/queued", &R[1]); /* queued */
    RUN_UNTIL(S.nheld == 1);
    snprintf(url, sizeof url, "http://localhost:%d/", S.port);
    assert_non_null(
        start_url("GET", url, NULL, 0, NULL, 0, &R[2], err, sizeof err)); /* resolving */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    assert_non_null(
        start_url("GET", url, NULL, 0, NULL, 0, &R[3], err, sizeof err)); /* connecting */
    assert_non_null(start_url("GET", url, NULL, 0, NULL, 0, &R[4], err, sizeof err)); /* queued */
    hd_httpc_free(hc, on_freed, &freed);
    char url2[64];
    snprintf(url2, sizeof url2, "http://127.0.0.1:%d/", S.port);
    assert_null(start_url("GET", url2, NULL, 0, NULL, 0, &R[5], err, sizeof err));
    assert_string_equal(err, "the HTTP client is shutting down");
    hc = NULL;
    RUN_UNTIL(freed == 1);
    RUN_UNTIL(S.eofs == 1);
    for (int i = 0; i < 6; i++) assert_int_equal(R[i].called, 0);
}

static void free_client(result *r)
{
    (void)r;
    hd_httpc_free(hc, on_freed, &freed);
    hc = NULL;
}

static result *chained;
static void start_another(result *r)
{
    hd_httpc_cancel(r->other);
    get("/d", chained);
}

static void test_from_callbacks(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    /* A callback that cancels a waiting call and starts another. The
     * oldest waiting call (/b) got the connection before the callback
     * ran; /d waits behind it. */
    R[0].then = start_another;
    chained = &R[3];
    get("/a", &R[0]);
    get("/b", &R[1]);
    R[0].other = get("/c", &R[2]);
    expect_ok(&R[0], 200, "ok");
    expect_ok(&R[1], 200, "ok");
    expect_ok(&R[3], 200, "ok");
    assert_int_equal(R[2].called, 0);
    assert_int_equal(S.nreqs, 3);
    assert_non_null(strstr(S.reqs[1].p, "/b "));
    assert_non_null(strstr(S.reqs[2].p, "/d "));
    assert_int_equal(S.accepts, 1);
    /* A callback that frees the client with calls in flight. */
    R[4].then = free_client;
    get("/e", &R[4]);
    get("/f", &R[5]);
    expect_ok(&R[4], 200, "ok");
    RUN_UNTIL(freed == 1);
    assert_int_equal(R[5].called, 0);
}

/* A request the server answers with an error response: still a response. */
static void test_error_status(void **state)
{
    (void)state;
    client(1, 16, 5000, 0, 0);
    S.reply = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy";
    get("/", &R[0]);
    expect_ok(&R[0], 503, "busy");
    assert_string_equal(R[0].hdrs.p, "retry-after: 1\ncontent-length: 4\n");
    assert_int_equal(st()->errors, 0);
}

/* ---- the parser alone ------------------------------------------------------------------- */

typedef struct parsed {
    int calls, status, reusable;
    hd_str out;
} parsed;

static void on_parsed(void *ud, const hd_httpc_res *res, int reusable)
{
    parsed *p = ud;
    p->calls++;
    p->status = res->status;
    p->reusable = reusable;
    for (size_t i = 0; i < res->nheaders; i++)
        hd_str_printf(&p->out, "%.*s=%.*s;", (int)res->headers[i].name_len, res->headers[i].name,
                      (int)res->headers[i].value_len, res->headers[i].value);
    hd_str_add(&p->out, res->body, res->body_len);
    assert_int_equal(res->body[res->body_len], 0);
}

/* Parses s whole, then split in two at every byte, then a byte at a time:
 * the same outcome each way. Returns the whole parse's code. */
static int parse_every_way(const char *s, int eof, int head, uint32_t max, parsed *whole, char *msg)
{
    size_t n = strlen(s);
    memset(whole, 0, sizeof *whole);
    const char *pieces[1] = {s};
    int rc = hd_httpc_parse(pieces, &n, 1, eof, head, max, on_parsed, whole, msg, 128);
    for (size_t cut = 0; cut <= n; cut++) {
        parsed p = {0};
        char m[128] = "";
        const char *two[2] = {s, s + cut};
        size_t lens[2] = {cut, n - cut};
        int rc2 = hd_httpc_parse(two, lens, 2, eof, head, max, on_parsed, &p, m, sizeof m);
        assert_int_equal(rc2, rc);
        assert_int_equal(p.calls, whole->calls);
        if (rc == 0) {
            assert_int_equal(p.status, whole->status);
            assert_int_equal(p.reusable, whole->reusable);
            assert_string_equal(p.out.p ? p.out.p : "", whole->out.p ? whole->out.p : "");
        } else if (rc < 0) {
            assert_string_equal(m, msg);
        }
        hd_str_free(&p.out);
    }
    const char **bytes = malloc((n ? n : 1) * sizeof *bytes);
    size_t *ones = malloc((n ? n : 1) * sizeof *ones);
    for (size_t i = 0; i < n; i++) bytes[i] = s + i, ones[i] = 1;
    parsed p = {0};
    char m[128] = "";
    assert_int_equal(hd_httpc_parse(bytes, ones, n, eof, head, max, on_parsed, &p, m, sizeof m),
                     rc);
    if (rc == 0) assert_string_equal(p.out.p ? p.out.p : "", whole->out.p ? whole->out.p : "");
    hd_str_free(&p.out);
    free(bytes);
    free(ones);
    return rc;
}

static void test_parser(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int eof, head, rc, status, reusable;
        const char *out; /* headers and body, or the error message */
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0, 0, 0, 200, 1,
         "content-length=5;hello"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloX", 0, 0, 0, 200, 0,
         "content-length=5;hello"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 0, 0, 0, 200,
         1, "transfer-encoding=chunked;abc"},
        {"HTTP/1.1 200 OK\r\nX-A:\t spaced \t\r\n\r\nbody", 1, 0, 0, 200, 0, "x-a=spaced;body"},
        {"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n", 0, 0, 0, 200, 1,
         "x-empty=;content-length=0;"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 0, 1, 0, 200, 1, "content-length=5;"},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", 0, 0, 0, 304,
         1, "etag=x;"},
        {"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na", 0, 0, 0, 200, 0, "content-length=1;a"},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na", 0, 0, 0, 200, 0,
         "connection=close;content-length=1;a"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 0, 0, 1, 0, 0, NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 1, 0, HD_ECLOSED, 0, 0,
         "connection closed during the response"},
        {"", 1, 0, HD_ECLOSED, 0, 0, "connection closed before the response"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", 0, 0, HD_ETOOBIG, 0, 0,
         "response too large"},
        {"HTTP/1.1 200 OK\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123",
         1, 0, HD_ETOOBIG, 0, 0, "response too large"},
        {"HTTP/1.1 abc\r\n\r\n", 0, 0, HD_EPROTO, 0, 0,
         "malformed response: Invalid response status"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parsed p;
        char msg[128] = "";
        int rc = parse_every_way(cases[i].in, cases[i].eof, cases[i].head, 64, &p, msg);
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d, expected %d (%s)", i, rc, cases[i].rc, msg);
        if (rc == 0) {
            assert_int_equal(p.status, cases[i].status);
            assert_int_equal(p.reusable, cases[i].reusable);
            assert_string_equal(p.out.p ? p.out.p : "", cases[i].out);
        } else if (rc < 0) {
            assert_string_equal(msg, cases[i].out);
        }
        hd_str_free(&p.out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parser),
        cmocka_unit_test_setup_teardown(test_get, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_post, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_chunked, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_until_close, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_interim_and_head, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_error_status, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_keepalive, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_pool_cap, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_idle_close, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_retry_stale, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_timeout, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_refused, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_malformed, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_too_large, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_localhost, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_max_in_flight, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_cancel_queued, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_cancel_connecting, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_cancel_writing, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_cancel_reading, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup_httpc, teardown_httpc),
        cmocka_unit_test_setup_teardown(test_from_callbacks, setup_httpc, teardown_httpc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
