/* tests/unit/test_cli.c: core/cli.c, the client commands. URLs parsed (and
 * refused without being repeated); argument errors give exit 2; and whole
 * exchanges with a scripted node on a loopback socket (a thread): the exact
 * request bytes, answers written in pieces of every size from one byte up,
 * chunked answers, answers kept open after their end, answers cut short,
 * a node that never answers, and the exit status and output of each. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/cli.c"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>

/* ---- URLs ------------------------------------------------------------------------------ */

static void test_url(void **st)
{
    (void)st;
    static const struct {
        const char *url, *host, *port, *base, *shown;
    } good[] = {
        {"http://127.0.0.1:4000", "127.0.0.1", "4000", "", "http://127.0.0.1:4000"},
        {"HTTP://localhost", "localhost", "80", "", "http://localhost:80"},
        {"http://[::1]:4001/", "::1", "4001", "", "http://[::1]:4001"},
        {"http://h:1/base/path//", "h", "1", "/base/path", "http://h:1/base/path"},
        {"http://[fe80::1]", "fe80::1", "80", "", "http://[fe80::1]:80"},
        {"http://h:65535", "h", "65535", "", "http://h:65535"},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        cli_url u;
        char err[256] = "";
        assert_int_equal(url_parse(good[i].url, &u, err, sizeof err), 0);
        assert_string_equal(u.host, good[i].host);
        assert_string_equal(u.port, good[i].port);
        assert_string_equal(u.base, good[i].base);
        assert_string_equal(u.shown, good[i].shown);
    }
    static const struct {
        const char *url, *err;
    } bad[] = {
        {"https://h", "https:// is not supported: give the node's http:// address"},
        {"h:4000", "the URL must start with http://"},
        {"http://user:secret@h:1", "credentials in the URL are not supported: use HERALD_API_TOKEN"},
        {"http://h:1?x=1", "the URL may not have a query or a fragment"},
        {"http://h:1#f", "the URL may not have a query or a fragment"},
        {"http://", "not a URL of the form http://host[:port][/path]"},
        {"http://:80", "not a URL of the form http://host[:port][/path]"},
        {"http://h:", "not a URL of the form http://host[:port][/path]"},
        {"http://h:0", "not a URL of the form http://host[:port][/path]"},
        {"http://h:65536", "not a URL of the form http://host[:port][/path]"},
        {"http://h:12a", "not a URL of the form http://host[:port][/path]"},
        {"http://[::1", "not a URL of the form http://host[:port][/path]"},
        {"http://[::1]x", "not a URL of the form http://host[:port][/path]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cli_url u;
        char err[256] = "";
        assert_int_equal(url_parse(bad[i].url, &u, err, sizeof err), -1);
        assert_string_equal(err, bad[i].err);
    }
}

/* ---- running a command ----------------------------------------------------------------- */

typedef struct run {
    int code;
    char *out, *err;
} run;

static run cli_run(int argc, char **argv)
{
    run r;
    size_t ol, el;
    FILE *out = open_memstream(&r.out, &ol), *err = open_memstream(&r.err, &el);
    r.code = hd_cli_main(argc, argv, out, err);
    fclose(out);
    fclose(err);
    return r;
}

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
}

#define RUN(...)                                                                                    \
    ({                                                                                              \
        char *argv_[] = {__VA_ARGS__};                                                              \
        cli_run((int)(sizeof argv_ / sizeof *argv_), argv_);                                        \
    })

static void test_arguments(void **st)
{
    (void)st;
    unsetenv("HERALD_URL");
    unsetenv("HERALD_API_TOKEN");
    assert_true(hd_cli_is_command("publish") && hd_cli_is_command("drain"));
    assert_false(hd_cli_is_command("check") || hd_cli_is_command("Status"));
    run r = RUN("status", "--help");
    assert_int_equal(r.code, 0);
    assert_non_null(strstr(r.out, "usage: herald status [--url URL] [--timeout SECONDS]\n"));
    assert_non_null(strstr(r.out, "GET /admin/status"));
    assert_string_equal(r.err, "");
    run_free(&r);
    static const struct {
        const char *a, *b, *c, *err;
    } bad[] = {
        {"--nope", NULL, NULL, "herald reload: unknown option '--nope'\nusage: herald reload"},
        {"x", NULL, NULL, "herald reload: unexpected argument 'x'\nusage: herald reload"},
        {"--url", NULL, NULL, "herald reload: --url needs a value\nusage: herald reload"},
        {"--timeout", "-1", NULL, "herald reload: --timeout takes seconds"},
        {"--timeout=1s", NULL, NULL, "herald reload: --timeout takes seconds"},
        {"--timeout", "90000", NULL, "herald reload: --timeout takes seconds"},
        {"--url", "http://h:99999", NULL, "herald reload: --url: not a URL"},
        {"--url=ftp://h", NULL, NULL, "herald reload: --url: the URL must start with http://\n"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[] = {"reload", (char *)bad[i].a, (char *)bad[i].b, (char *)bad[i].c};
        int argc = 1 + (bad[i].a != NULL) + (bad[i].b != NULL) + (bad[i].c != NULL);
        r = cli_run(argc, argv);
        assert_int_equal(r.code, 2);
        assert_string_equal(r.out, "");
        if (strncmp(r.err, bad[i].err, strlen(bad[i].err)) != 0)
            fail_msg("%s: got \"%s\"", bad[i].err, r.err);
        run_free(&r);
    }
    r = RUN("publish", "t", "e");
    assert_int_equal(r.code, 2);
    assert_non_null(strstr(r.err, "herald publish: expected TOPIC EVENT JSON\n"));
    run_free(&r);
    r = RUN("publish", "t", "e", "{\"a\":1,}");
    assert_int_equal(r.code, 2);
    assert_string_equal(r.err, "herald publish: JSON is not valid JSON: string or '}' expected "
                               "near '}' (column 8)\n");
    run_free(&r);
    r = RUN("publish", "t\xff", "e", "1");
    assert_int_equal(r.code, 2);
    assert_string_equal(r.err, "herald publish: TOPIC and EVENT must be UTF-8 text\n");
    run_free(&r);
    r = RUN("publish", "t", "e", "1", "2");
    assert_int_equal(r.code, 2);
    assert_non_null(strstr(r.err, "herald publish: unexpected argument '2'\n"));
    run_free(&r);
    /* A token that cannot go in a header is refused, not shown. */
    setenv("HERALD_API_TOKEN", "sec\r\nret", 1);
    r = RUN("status");
    assert_int_equal(r.code, 2);
    assert_string_equal(r.err, "herald status: HERALD_API_TOKEN holds a control character\n");
    run_free(&r);
    unsetenv("HERALD_API_TOKEN");
}

/* ---- a scripted node ------------------------------------------------------------------- */

typedef struct node {
    int lfd;
    int port;
    const char *answer; /* written in pieces of `piece` bytes; NULL: never answers */
    size_t answer_len;
    size_t piece;
    int keep_open; /* after the answer, wait for the client to close */
    char request[8192];
    size_t request_len;
    pthread_t thread;
} node;

/* Reads one request (head, then Content-Length bytes of body). */
static void read_request(node *n, int fd)
{
    for (;;) {
        ssize_t k = recv(fd, n->request + n->request_len, sizeof n->request - 1 - n->request_len, 0);
        if (k <= 0) return;
        n->request_len += (size_t)k;
        n->request[n->request_len] = 0;
        char *end = strstr(n->request, "\r\n\r\n");
        if (!end) continue;
        char *cl = strstr(n->request, "Content-Length: ");
        size_t want = (size_t)(end + 4 - n->request) + (cl ? strtoul(cl + 16, NULL, 10) : 0);
        if (n->request_len >= want) return;
    }
}

static void *node_main(void *ud)
{
    node *n = ud;
    int fd = accept(n->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    read_request(n, fd);
    if (n->answer) {
        for (size_t off = 0; off < n->answer_len;) {
            size_t k = n->answer_len - off < n->piece ? n->answer_len - off : n->piece;
            ssize_t w = send(fd, n->answer + off, k, MSG_NOSIGNAL);
            if (w <= 0) break;
            off += (size_t)w;
        }
    }
    if (n->keep_open || !n->answer) {
        char b[64];
        while (recv(fd, b, sizeof b, 0) > 0) {} /* until the client closes */
    }
    close(fd);
    return NULL;
}

static void node_start(node *n, const char *says, size_t piece, int keep_open)
{
    memset(n, 0, sizeof *n);
    n->answer = says;
    n->answer_len = says ? strlen(says) : 0;
    n->piece = piece;
    n->keep_open = keep_open;
    n->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(n->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(n->lfd, 1), 0);
    assert_int_equal(getsockname(n->lfd, (struct sockaddr *)&a, &al), 0);
    n->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&n->thread, NULL, node_main, n), 0);
}

static void node_join(node *n)
{
    pthread_join(n->thread, NULL);
    close(n->lfd);
}

/* Runs command (with args) against a node answering `says`. */
static run against(node *n, const char *says, size_t piece, int keep_open, const char *timeout,
                   int argc, char **args)
{
    node_start(n, says, piece, keep_open);
    char url[64];
    snprintf(url, sizeof url, "--url=http://127.0.0.1:%d/pre", n->port);
    char *argv[8];
    int k = 0;
    for (int i = 0; i < argc; i++) argv[k++] = args[i];
    argv[k++] = url;
    argv[k++] = "--timeout";
    argv[k++] = (char *)timeout;
    run r = cli_run(k, argv);
    node_join(n);
    return r;
}

/* An answer with status (e.g. "200 OK") and body, its Content-Length
 * counted, then `after` (bytes past the message); static, until the next. */
static const char *answer_of(const char *status, const char *body, const char *after)
{
    static char out[2048];
    snprintf(out, sizeof out,
             "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s%s",
             status, strlen(body), body, after);
    return out;
}
static const char status_printed[] = "{\n  \"state\": \"ready\",\n  \"n\": [\n    1\n  ]\n}\n";

static void test_exchange_pieces(void **st)
{
    (void)st;
    setenv("HERALD_API_TOKEN", "tok", 1);
    char *status[] = {"status"};
    char *status_answer = strdup(answer_of("200 OK", "{\"state\":\"ready\",\"n\":[1]}\n", ""));
    size_t len = strlen(status_answer);
    /* Every piece size; the node closing after the answer or keeping the
     * connection (the client stops at the end of the message). */
    for (size_t piece = 1; piece <= len; piece++) {
        node n;
        run r = against(&n, status_answer, piece, (int)(piece & 1), "10", 1, status);
        assert_int_equal(r.code, 0);
        assert_string_equal(r.out, status_printed);
        assert_string_equal(r.err, "");
        run_free(&r);
        char want[256];
        snprintf(want, sizeof want,
                 "GET /pre/admin/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: herald/%s\r\n"
                 "Accept: application/json\r\nConnection: close\r\nAuthorization: Bearer tok\r\n\r\n",
                 n.port, HERALD_VERSION);
        assert_string_equal(n.request, want);
    }
    free(status_answer);
    unsetenv("HERALD_API_TOKEN");
}

static void test_exchange_requests(void **st)
{
    (void)st;
    unsetenv("HERALD_API_TOKEN");
    node n;
    char *publish[] = {"publish", "room:1", "ev", "{\"a\": [1, \"\\u00e9\"]}"};
    /* What follows the answer is not read. */
    const char *pushed = answer_of("200 OK", "{\"channel\":[\"room:1\"],\"data\":\"x\",\"event\":\"ev\"}",
                                   "HTTP/1.1 500 Oops\r\n\r\n");
    run r = against(&n, pushed, 7, 1, "10", 4, publish);
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "{\n  \"channel\": [\n    \"room:1\"\n  ],\n  \"data\": \"x\",\n"
                               "  \"event\": \"ev\"\n}\n");
    run_free(&r);
    static const char body[] = "{\"channel\":\"room:1\",\"event\":\"ev\",\"data\":{\"a\":[1,\"\xc3\xa9\"]}}";
    char want[512];
    snprintf(want, sizeof want,
             "POST /pre/api/push HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: herald/%s\r\n"
             "Accept: application/json\r\nConnection: close\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             n.port, HERALD_VERSION, strlen(body), body);
    assert_string_equal(n.request, want);

    /* A body that runs to the close. */
    char *status[] = {"status"};
    r = against(&n, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"x\":1}", 2, 0, "10", 1, status);
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "{\n  \"x\": 1\n}\n");
    run_free(&r);

    /* A POST without a body still says its length. */
    char *drain[] = {"drain"};
    static const char draining[] = "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   "5\r\n{\"sta\r\n10\r\ntus\":\"draining\"}\r\n0\r\n\r\n";
    r = against(&n, draining, 3, 1, "10", 1, drain);
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "{\n  \"status\": \"draining\"\n}\n");
    run_free(&r);
    assert_non_null(strstr(n.request, "POST /pre/admin/drain HTTP/1.1\r\n"));
    assert_non_null(strstr(n.request, "\r\nContent-Length: 0\r\n\r\n"));
    assert_null(strstr(n.request, "Authorization"));
}

static void test_exchange_failures(void **st)
{
    (void)st;
    unsetenv("HERALD_API_TOKEN");
    node n;
    char *reload[] = {"reload"};
    const char *refused = answer_of("422 Unprocessable Content",
                                    "{\"error\":\"hooks.lua:3: 'end' expected\\nnear\"}", "");
    run r = against(&n, refused, 1000, 0, "10", 1, reload);
    assert_int_equal(r.code, 1);
    assert_string_equal(r.out, "");
    char want[256];
    snprintf(want, sizeof want,
             "herald reload: the reload failed: http://127.0.0.1:%d/pre answered 422: "
             "hooks.lua:3: 'end' expected near\n",
             n.port);
    assert_string_equal(r.err, want);
    run_free(&r);

    char *status[] = {"status"};
    r = against(&n, answer_of("403 Forbidden", "{\"error\":\"Access forbidden\"}", ""), 1000, 0,
                "10", 1, status);
    assert_int_equal(r.code, 1);
    snprintf(want, sizeof want,
             "herald status: http://127.0.0.1:%d/pre answered 403: Access forbidden "
             "(HERALD_API_TOKEN is not set)\n",
             n.port);
    assert_string_equal(r.err, want);
    run_free(&r);

    /* Not JSON: said as it came, on one line. */
    r = against(&n, answer_of("502 Bad Gateway", "no\r\nproxy", ""), 1000, 0, "10", 1, status);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "answered 502: no  proxy\n"));
    run_free(&r);

    static const struct {
        const char *answer, *err;
    } cut[] = {
#define CLOSED "the node closed the connection before a whole answer"
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", CLOSED},
        {"HTTP/1.1 200 OK\r\nContent-Le", CLOSED},
        {"", CLOSED},
#undef CLOSED
        {"SSH-2.0-OpenSSH_9.2\r\n", "a malformed HTTP answer"},
    };
    for (size_t i = 0; i < sizeof cut / sizeof *cut; i++) {
        r = against(&n, cut[i].answer, 1000, 0, "10", 1, status);
        assert_int_equal(r.code, 1);
        snprintf(want, sizeof want, "herald status: %s\n", cut[i].err);
        assert_string_equal(r.err, want);
        run_free(&r);
    }

    /* A node that takes the request and never answers: the deadline. */
    r = against(&n, NULL, 1, 0, "0.2", 1, status);
    assert_int_equal(r.code, 1);
    assert_string_equal(r.err, "herald status: no answer within the timeout\n");
    run_free(&r);
}

static void test_refused(void **st)
{
    (void)st;
    /* A port nobody listens on: bound, never listening. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    char url[64], want[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
    setenv("HERALD_URL", url, 1);
    run r = RUN("drain");
    close(fd);
    unsetenv("HERALD_URL");
    assert_int_equal(r.code, 1);
    snprintf(want, sizeof want,
             "herald drain: cannot connect to %s: Connection refused (is herald running there?)\n",
             url);
    assert_string_equal(r.err, want);
    assert_string_equal(r.out, "");
    run_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_exchange_pieces),
        cmocka_unit_test(test_exchange_requests),
        cmocka_unit_test(test_exchange_failures),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
