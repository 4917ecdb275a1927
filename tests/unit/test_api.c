/* tests/unit/test_api.c: core/api.c on a real server (harness.h): the
 * route table (404, 405 and its Allow header, HEAD), the auth gate (the
 * loopback rule, the token, the api_auth hook over both), POST /api/push
 * beyond what test_server.c asserts (batch validation, forms, query
 * parameters, content types, limits), GET /api/topics/ and
 * /api/presence/, and routes added with hd_api_route. Exact bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api.h"
#include "buf.h"
#include "config.h"
#include "err.h"
#include "log.h"
#include "script.h"
#include "server.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "harness.h"

static const char api_config[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "limits = { max_body_bytes = 65536, max_header_bytes = 1024, max_url_bytes = 256,\n"
    "           max_topics_per_socket = 2 }\n"
    "topics = { { match = 'public:*', tracked = false },\n"
    "           { match = 'feed:*', presence = true, throttle_ms = 50, coalesce = 'latest',\n"
    "             max_queue_bytes = 4096, on_overflow = 'drop_oldest' } }\n"
    "log = { level = 'error' }\n";

static const char token_config[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "api = { token = 'sekret' }\n"
    "log = { level = 'error' }\n";

/* api_auth by a header: allow, deny, or no opinion (the static rule). */
static const char api_auth_hook[] =
    "local M = {}\n"
    "function M.api_auth(req)\n"
    "  local v = req.headers['x-verdict']\n"
    "  if v == 'allow' then return true elseif v == 'deny' then return false end\n"
    "end\n"
    "return M\n";

static int setup_api(void **st)
{
    (void)st;
    return setup_with(api_config);
}

static int setup_token(void **st)
{
    (void)st;
    return setup_with_script(token_config, api_auth_hook);
}

static int setup_hook_no_token(void **st)
{
    (void)st;
    return setup_with_script(base_config, api_auth_hook);
}

/* ---- helpers --------------------------------------------------------------------------- */

static const char presence_t[] = "GET /api/presence/t HTTP/1.1\r\nHost: x\r\n\r\n";
static const char forbidden[] = "{\"error\":\"Access forbidden\"}";
static const char not_allowed[] = "{\"error\":\"method not allowed\"}";
static const char invalid_push[] =
    "{\"error\":\"Invalid push arguments: channel, data, event are required.\"}";

/* Sends req on c and expects the answer. */
static void roundtrip(cli *c, const char *req, int status, const char *reason,
                      const char *extra, const char *body)
{
    cli_sends(c, req);
    expect_response(c, status, reason, "keep-alive", extra, body);
}

/* A POST /api/push<query> request (query "" or "?..."); ctype NULL: no
 * Content-Type. Caller frees. */
static char *push_req(const char *query, const char *ctype, const char *body)
{
    size_t n = strlen(body) + 512;
    char *r = malloc(n);
    snprintf(r, n, "POST /api/push%s HTTP/1.1\r\nHost: x\r\n%s%s%sContent-Length: %zu\r\n\r\n%s",
             query, ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "",
             strlen(body), body);
    return r;
}

static void push_expect(cli *c, const char *query, const char *ctype, const char *body,
                        int status, const char *reason, const char *answer)
{
    char *r = push_req(query, ctype, body);
    roundtrip(c, r, status, reason, "", answer);
    free(r);
}

/* Sends req on a new connection whose peer is not loopback; returns what
 * it queued (caller frees) and closes it. */
static char *remote_request(const char *req)
{
    hd_conn *c = conn_by_hand(&srv.net, srv.net.accept_ops);
    assert_int_equal(hd_conn_is_loopback(c), 0);
    conn_feed(c, req, strlen(req));
    char *s = queued_text(c); /* the writer has not run yet */
    hd_conn_close(c);
    return s;
}

static void remote_expect(const char *req, int status, const char *reason, const char *extra,
                          const char *body)
{
    char *got = remote_request(req);
    char *want = expected(status, reason, "keep-alive", extra, body);
    assert_string_equal(got, want);
    free(got);
    free(want);
}

/* ---- the route table --------------------------------------------------------------------- */

/* Paths no route matches, whatever the method: 404. A prefix route needs
 * something after its prefix; paths are case-sensitive; the query is not
 * part of the path. */
static void test_not_found(void **st)
{
    (void)st;
    static const char *const reqs[] = {
        "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "GET /api/topics/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/topics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/presence/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api/push/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "POST /api/pushx HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "POST /API/push HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "GET /healthz/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /socket HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    cli *c = cli_new();
    for (size_t i = 0; i < sizeof reqs / sizeof *reqs; i++)
        roundtrip(c, reqs[i], 404, "Not Found", "", "{\"error\":\"not found\"}");
    roundtrip(c, "GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200, "OK", "",
              "{\"status\":\"ok\"}");
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* A wrong method on each route: 405 with the exact Allow header; GET
 * routes answer HEAD with GET's head and no body. */
static void test_methods(void **st)
{
    (void)st;
    static const struct {
        const char *method, *path, *allow;
    } cases[] = {
        {"PUT", "/api/push", "Allow: POST\r\n"},
        {"POST", "/api/topics/t", "Allow: GET, HEAD\r\n"},
        {"DELETE", "/api/presence/t", "Allow: GET, HEAD\r\n"},
        {"PUT", "/healthz", "Allow: GET, HEAD\r\n"},
        {"POST", "/readyz", "Allow: GET, HEAD\r\n"},
        {"POST", "/metrics", "Allow: GET, HEAD\r\n"},
        {"GET", "/admin/reload", "Allow: POST\r\n"},
        {"GET", "/admin/drain", "Allow: POST\r\n"},
        {"HEAD", "/admin/drain", "Allow: POST\r\n"},
        {"POST", "/admin/status", "Allow: GET, HEAD\r\n"},
    };
    cli *c = cli_new();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char req[256];
        snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                 cases[i].method, cases[i].path);
        cli_sends(c, req);
        if (strcmp(cases[i].method, "HEAD") == 0) {
            char *want = expected(405, "Method Not Allowed", "keep-alive", cases[i].allow,
                                  not_allowed);
            *strstr(want, "\r\n\r\n{") = 0; /* the head only */
            strcat(want, "\r\n\r\n");
            RUN_UNTIL(strstr(c->in.p, "\r\n\r\n"));
            assert_string_equal(c->in.p, want);
            consume(c, c->in.len);
            free(want);
        } else {
            expect_response(c, 405, "Method Not Allowed", "keep-alive", cases[i].allow,
                            not_allowed);
        }
    }
    assert_int_equal(srv.state, HD_READY); /* GET /admin/drain did not drain */
    /* HEAD on GET routes: the head GET gets, without the body. */
    static const char *const paths[] = {"/api/topics/t", "/api/presence/t", "/healthz",
                                        "/readyz", "/metrics", "/admin/status"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        char req[512];
        snprintf(req, sizeof req, "HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i]);
        cli_sends(c, req);
        RUN_UNTIL(strstr(c->in.p, "\r\n\r\n"));
        char *head = strndup(c->in.p, (size_t)(strstr(c->in.p, "\r\n\r\n") + 4 - c->in.p));
        consume(c, strlen(head));
        assert_memory_equal(head, "HTTP/1.1 200 OK\r\n", 17);
        if (strcmp(paths[i], "/metrics") != 0 && strcmp(paths[i], "/admin/status") != 0) {
            /* (those two change between requests) */
            snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i]);
            cli_sends(c, req);
            char *full = next_response(c);
            assert_memory_equal(full, head, strlen(head));
            free(full);
        }
        free(head);
        /* Nothing followed the head: the next answer starts at once. */
        roundtrip(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "OK", "",
                  "{\"status\":\"ok\"}");
    }
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- the auth gate ----------------------------------------------------------------------- */

/* Without a token, the API and admin routes answer loopback peers only;
 * the node's public routes answer anyone. */
static void test_auth_loopback_only(void **st)
{
    (void)st;
    remote_expect("GET /api/topics/t HTTP/1.1\r\nHost: x\r\n\r\n", 403, "Forbidden", "", forbidden);
    remote_expect(presence_t, 403, "Forbidden", "", forbidden);
    remote_expect("GET /admin/status HTTP/1.1\r\nHost: x\r\n\r\n", 403, "Forbidden", "", forbidden);
    remote_expect("POST /admin/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 403,
                  "Forbidden", "", forbidden);
    char *r = push_req("", "application/json", "{\"channel\":\"t\",\"event\":\"e\",\"data\":1}");
    remote_expect(r, 403, "Forbidden", "", forbidden);
    free(r);
    remote_expect("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "OK", "", "{\"status\":\"ok\"}");
    remote_expect("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "OK", "",
                  "{\"status\":\"ready\"}");
    /* The method is checked before the gate. */
    remote_expect("GET /api/push HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed",
                  "Allow: POST\r\n", not_allowed);
    assert_int_equal(srv.st.publishes, 0);
    assert_int_equal(srv.state, HD_READY);
    /* The same from loopback passes. */
    cli *c = cli_new();
    roundtrip(c, presence_t, 200, "OK", "", "{}");
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* With api.token: Authorization: Bearer <token> (the scheme in any case,
 * blanks before the token and after it ignored), else 403, loopback or
 * not; an api_auth hook that answers overrides the token both ways. */
static void test_auth_token(void **st)
{
    (void)st;
    static const struct {
        const char *headers;
        int ok;
    } cases[] = {
        {"", 0},
        {"Authorization: Bearer wrong\r\n", 0},
        {"Authorization: Bearer sekre\r\n", 0},
        {"Authorization: Bearer sekrets\r\n", 0},
        {"Authorization: Basic sekret\r\n", 0},
        {"Authorization: Bearer\r\n", 0},
        {"Authorization: sekret\r\n", 0},
        {"Authorization: Bearer sekret\r\n", 1},
        {"Authorization: bearer sekret\r\n", 1},
        {"Authorization: BEARER   sekret  \r\n", 1},
        /* The hook's verdict wins; no opinion leaves it to the token. */
        {"X-Verdict: allow\r\n", 1},
        {"X-Verdict: allow\r\nAuthorization: Bearer wrong\r\n", 1},
        {"X-Verdict: deny\r\nAuthorization: Bearer sekret\r\n", 0},
        {"X-Verdict: shrug\r\nAuthorization: Bearer sekret\r\n", 1},
        {"X-Verdict: shrug\r\n", 0},
    };
    cli *c = cli_new();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char req[512];
        snprintf(req, sizeof req, "GET /api/presence/t HTTP/1.1\r\nHost: x\r\n%s\r\n",
                 cases[i].headers);
        cli_sends(c, req);
        if (cases[i].ok) expect_response(c, 200, "OK", "keep-alive", "", "{}");
        else expect_response(c, 403, "Forbidden", "keep-alive", "", forbidden);
    }
    /* Public routes need nothing; a wrong method is 405 before the gate. */
    roundtrip(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "OK", "", "{\"status\":\"ok\"}");
    roundtrip(c, "GET /api/push HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed",
              "Allow: POST\r\n", not_allowed);
    char *r = push_req("", "application/json", "{\"channel\":\"t\",\"event\":\"e\",\"data\":1}");
    roundtrip(c, r, 403, "Forbidden", "", forbidden);
    free(r);
    cli_free(c);
    /* The token is enough from a peer that is not loopback. */
    remote_expect("GET /api/presence/t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n\r\n",
                  200, "OK", "", "{}");
    remote_expect(presence_t, 403, "Forbidden", "", forbidden);
    RUN_UNTIL(srv.net.nconns == 0);
    assert_int_equal(srv.st.publishes, 0);
}

/* Without a token, an api_auth hook decides over the loopback rule. */
static void test_auth_hook_without_token(void **st)
{
    (void)st;
    cli *c = cli_new();
    roundtrip(c, "GET /api/presence/t HTTP/1.1\r\nHost: x\r\nX-Verdict: deny\r\n\r\n", 403,
              "Forbidden", "", forbidden);
    roundtrip(c, presence_t, 200, "OK", "", "{}");
    cli_free(c);
    remote_expect("GET /api/presence/t HTTP/1.1\r\nHost: x\r\nX-Verdict: allow\r\n\r\n", 200,
                  "OK", "", "{}");
    remote_expect(presence_t, 403, "Forbidden", "", forbidden);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- POST /api/push ------------------------------------------------------------------------ */

/* A batch is checked whole before anything is published: a bad item is
 * a 422 naming its index, and no item goes out. */
static void test_push_batch_validation(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room");
    cli *c = cli_new();
    static const struct {
        const char *body;
        const char *answer;
    } cases[] = {
        {"[{\"channel\":\"room\",\"event\":\"a\",\"data\":1},{\"channel\":\"room\",\"data\":2}]",
         "{\"error\":\"Invalid push arguments: channel, data, event are required.\",\"index\":1}"},
        {"[{\"channel\":\"room\",\"event\":\"a\",\"data\":1},{\"channel\":\"room\",\"event\":\"b\","
         "\"data\":2},5]",
         "{\"error\":\"Invalid push arguments: channel, data, event are required.\",\"index\":2}"},
        {"[{\"channel\":[],\"event\":\"a\",\"data\":1}]",
         "{\"error\":\"Invalid push arguments: channel, data, event are required.\",\"index\":0}"},
        {"[{\"channel\":[\"room\",7],\"event\":\"a\",\"data\":1}]",
         "{\"error\":\"Invalid push arguments: channel, data, event are required.\",\"index\":0}"},
        {"[{\"channel\":\"room\",\"event\":3,\"data\":1}]",
         "{\"error\":\"Invalid push arguments: channel, data, event are required.\",\"index\":0}"},
        {"[]",
         "{\"error\":\"Invalid push arguments: channel, data, event are required.\",\"index\":0}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        push_expect(c, "", "application/json", cases[i].body, 422, "Unprocessable Content",
                    cases[i].answer);
    /* Singles: a scalar, null data is data, a missing field is not. */
    push_expect(c, "", "application/json", "5", 422, "Unprocessable Content", invalid_push);
    push_expect(c, "", "application/json", "{\"channel\":\"room\",\"event\":\"e\"}", 422,
                "Unprocessable Content", invalid_push);
    push_expect(c, "", "application/json", "{\"channel\":7,\"event\":\"e\",\"data\":1}", 422,
                "Unprocessable Content", invalid_push);
    assert_int_equal(srv.st.publishes, 0);
    /* Nothing reached the subscriber: the next frame is a marker. */
    assert_int_equal(hd_api_publish(&srv.api, "room", 4, "end", 3, "0", 1), 1);
    expect_text(ws, "[null,null,\"room\",\"msg\",{\"data\":0,\"event\":\"end\"}]");
    /* A good batch after: every item, in order. */
    push_expect(c, "", "application/json",
                "[{\"channel\":\"room\",\"event\":\"a\",\"data\":null},"
                "{\"channel\":[\"room\",\"room\",\"other\"],\"event\":\"b\",\"data\":{\"k\":[]}}]",
                200, "OK",
                "[{\"channel\":[\"room\"],\"data\":null,\"event\":\"a\"},"
                "{\"channel\":[\"room\",\"other\"],\"data\":{\"k\":[]},\"event\":\"b\"}]");
    expect_text(ws, "[null,null,\"room\",\"msg\",{\"data\":null,\"event\":\"a\"}]");
    expect_text(ws, "[null,null,\"room\",\"msg\",{\"data\":{\"k\":[]},\"event\":\"b\"}]");
    assert_int_equal(srv.st.publishes, 1 + 3);
    cli_free(c);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* Forms: channel or channel[] (a list), event and data as strings; query
 * parameters fill what the body lacks (and never replace what it has),
 * for JSON objects and forms alike, not for batches. */
static void test_push_form_and_query(void **st)
{
    (void)st;
    static const char form[] = "application/x-www-form-urlencoded";
    cli *c = cli_new();
    push_expect(c, "", form, "channel=a&channel[]=b&event=e&data=1", 200, "OK",
                "{\"channel\":[\"a\",\"b\"],\"data\":\"1\",\"event\":\"e\"}");
    push_expect(c, "", form, "channel[]=x&event=e&data=%7B%7D", 200, "OK",
                "{\"channel\":[\"x\"],\"data\":\"{}\",\"event\":\"e\"}");
    push_expect(c, "", form, "channel=a&channel=b&event=e&data=d&other=z", 200, "OK",
                "{\"channel\":[\"b\"],\"data\":\"d\",\"event\":\"e\"}");
    push_expect(c, "", "application/x-www-form-urlencoded; charset=UTF-8",
                "channel=a&event=e&data=", 200, "OK",
                "{\"channel\":[\"a\"],\"data\":\"\",\"event\":\"e\"}");
    push_expect(c, "", form, "channel=a&event=e", 422, "Unprocessable Content", invalid_push);
    /* The query fills in. */
    push_expect(c, "?channel=q1&event=qe", "application/json", "{\"data\":1}", 200, "OK",
                "{\"channel\":[\"q1\"],\"data\":1,\"event\":\"qe\"}");
    push_expect(c, "?channel=q&event=qe&data=9", "application/json",
                "{\"channel\":\"c\",\"event\":\"be\",\"data\":1}", 200, "OK",
                "{\"channel\":[\"c\"],\"data\":1,\"event\":\"be\"}");
    push_expect(c, "?channel[]=a&channel[]=b&data=x+y", form, "event=e", 200, "OK",
                "{\"channel\":[\"a\",\"b\"],\"data\":\"x y\",\"event\":\"e\"}");
    push_expect(c, "?event=e", "application/json", "[{\"channel\":\"a\",\"data\":1}]", 422,
                "Unprocessable Content",
                "{\"error\":\"Invalid push arguments: channel, data, event are required.\","
                "\"index\":0}");
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* A multipart/form-data push (RFC 7578), as PushEx (Plug.Parsers) reads
 * one: the fields of the urlencoded form, every value a string; file parts
 * and other fields ignored; the query fills in. */
static void test_push_multipart(void **st)
{
    (void)st;
    cli *c = cli_new();
    static const char mp[] = "multipart/form-data; boundary=XyZ";
#define CD "Content-Disposition: form-data; name="
#define PART(name, value) "--XyZ\r\n" CD "\"" name "\"\r\n\r\n" value "\r\n"
    push_expect(c, "", mp,
                PART("channel", "a") PART("event", "e") PART("data", "{\"x\":1}") "--XyZ--\r\n",
                200, "OK", "{\"channel\":[\"a\"],\"data\":\"{\\\"x\\\":1}\",\"event\":\"e\"}");
    /* channel then channel[] twice; a preamble, an epilogue, padding after a
     * delimiter, other headers, a file part named data, an unknown field,
     * a part without headers, CRLF and dashes inside a value. */
    push_expect(c, "", mp,
                "preamble\r\n" PART("channel", "a") PART("channel[]", "b")
                "--XyZ \t\r\ncontent-type: text/plain\r\n"
                "CONTENT-DISPOSITION: Form-Data;name=channel[]\r\n\r\nc\r\n"
                "--XyZ\r\n" CD "\"data\"; filename=\"f.txt\"\r\n\r\nFILE\r\n"
                PART("other", "z") "--XyZ\r\n\r\nno headers\r\n" PART("event", "e")
                PART("data", "line 1\r\n--Xy line 2") "--XyZ--\r\nepilogue",
                200, "OK",
                "{\"channel\":[\"a\",\"b\",\"c\"],\"data\":\"line 1\\r\\n--Xy line 2\","
                "\"event\":\"e\"}");
    /* A quoted boundary with a space and other parameters around it; the
     * first delimiter after a CRLF; an empty value; the query fills in. */
#define QB "a b'()+_,-./:=?"
    push_expect(c, "?event=qe", "Multipart/Form-Data; charset=utf-8; boundary=\"" QB "\"; x=y",
                "\r\n--" QB "\r\n" CD "\"channel\"\r\n\r\nq\r\n"
                "--" QB "\r\n" CD "data\r\n\r\n\r\n--" QB "--",
                200, "OK", "{\"channel\":[\"q\"],\"data\":\"\",\"event\":\"qe\"}");
#undef QB
    /* Fields missing, or a value that is not UTF-8: as absent. */
    push_expect(c, "", mp, PART("channel", "a") PART("event", "e") "--XyZ--", 422,
                "Unprocessable Content", invalid_push);
    push_expect(c, "", mp, PART("channel", "a") PART("event", "e") PART("data", "\xff") "--XyZ--",
                422, "Unprocessable Content", invalid_push);
    /* Malformed: 400, saying what. */
#define MPB "multipart/form-data; boundary="
#define BAD_B "multipart/form-data with a malformed boundary parameter"
#define BAD "malformed multipart body: "
    static const struct {
        const char *ctype, *body, *error;
    } bad[] = {
        {"multipart/form-data", PART("channel", "a") "--XyZ--",
         "multipart/form-data without a boundary parameter"},
        {MPB, "--\r\n--", BAD_B},
        {MPB "\"XyZ", "--XyZ--", BAD_B},
        {MPB "a@b", "--a@b--", BAD_B},
        {MPB "\"b \"", "--b --", BAD_B},
        {MPB "12345678901234567890123456789012345678901234567890123456789012345678901", "--x--",
         BAD_B},
        {mp, "", BAD "no boundary"},
        {mp, "channel=a&event=e&data=d", BAD "no boundary"},
        {mp, PART("channel", "a"), BAD "no closing boundary"},
        {mp, "--XyZjunk\r\n", BAD "a boundary line does not end with CRLF"},
        {mp, PART("channel", "a") "--XyZ", BAD "a boundary line does not end with CRLF"},
        {mp, "--XyZ\r\n" CD "\"a\"\r\n", BAD "a part's headers do not end"},
        {mp, "--XyZ\r\nno colon\r\n\r\nv\r\n--XyZ--", BAD "a part's header line"},
        {mp, "--XyZ\r\n" CD "\"a\r\n\r\nv\r\n--XyZ--", BAD "a part's header line"},
        {mp, "--XyZ\r\n" CD "\"a\"\r\n\r\nv", BAD "no closing boundary"},
    };
#undef MPB
#undef BAD_B
#undef BAD
#undef CD
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char want[256];
        snprintf(want, sizeof want, "{\"error\":\"%s\"}", bad[i].error);
        push_expect(c, "", bad[i].ctype, bad[i].body, 400, "Bad Request", want);
    }
#undef PART
    assert_int_equal(srv.st.publishes, 5); /* one a channel */
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* JSON (with parameters), forms, or a body that looks like JSON when no
 * type is given; any other type is 415; bad JSON is 400 naming where. */
static void test_push_content_types(void **st)
{
    (void)st;
    cli *c = cli_new();
    static const char one[] = "{\"channel\":\"t\",\"event\":\"e\",\"data\":1}";
    static const char one_answer[] = "{\"channel\":[\"t\"],\"data\":1,\"event\":\"e\"}";
    push_expect(c, "", "application/json; charset=utf-8", one, 200, "OK", one_answer);
    push_expect(c, "", "Application/JSON", one, 200, "OK", one_answer);
    push_expect(c, "", NULL, one, 200, "OK", one_answer);
    push_expect(c, "", NULL, " \r\n\t[{\"channel\":\"t\",\"event\":\"e\",\"data\":1}]", 200, "OK",
                "[{\"channel\":[\"t\"],\"data\":1,\"event\":\"e\"}]");
    push_expect(c, "", NULL, "channel=t&event=e&data=1", 200, "OK",
                "{\"channel\":[\"t\"],\"data\":\"1\",\"event\":\"e\"}");
    static const char *const others[] = {"text/plain", "application/xml", "multipart/mixed",
                                         "multipart/form-datax; boundary=b", "application/jso",
                                         ""};
    for (size_t i = 0; i < sizeof others / sizeof *others; i++)
        push_expect(c, "", others[i], one, 415, "Unsupported Media Type",
                    "{\"error\":\"unsupported content type: use application/json, "
                    "application/x-www-form-urlencoded, multipart/form-data or application/octet-stream\"}");
    push_expect(c, "", "application/json", "{]", 400, "Bad Request",
                "{\"error\":\"invalid JSON: string or '}' expected near ']' at line 1, "
                "column 2\"}");
    push_expect(c, "", "application/json", "{\"channel\":\"t\",\n\"event\": ,\n\"data\":1}", 400,
                "Bad Request",
                "{\"error\":\"invalid JSON: unexpected token near ',' at line 2, column 10\"}");
    push_expect(c, "", "application/json", "", 400, "Bad Request",
                "{\"error\":\"invalid JSON: unexpected token near end of file at line 1, "
                "column 0\"}");
    assert_int_equal(srv.st.publishes, 5);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* One push names at most HD_API_MAX_CHANNELS distinct channels (after
 * removing repeats); one batch holds at most as many items. */
static void test_push_limits(void **st)
{
    (void)st;
    cli *c = cli_new();
    hd_str body = HD_STR_INIT, answer = HD_STR_INIT;
    hd_str_adds(&body, "{\"event\":\"e\",\"data\":1,\"channel\":[");
    hd_str_adds(&answer, "{\"channel\":[");
    for (int i = 0; i < HD_API_MAX_CHANNELS; i++) {
        hd_str_printf(&body, "%s\"c%d\",\"c%d\"", i ? "," : "", i, i);
        hd_str_printf(&answer, "%s\"c%d\"", i ? "," : "", i);
    }
    hd_str_adds(&answer, "],\"data\":1,\"event\":\"e\"}");
    hd_str body_ok = HD_STR_INIT;
    hd_str_printf(&body_ok, "%s]}", body.p);
    push_expect(c, "", "application/json", body_ok.p, 200, "OK", answer.p);
    assert_int_equal(srv.st.publishes, HD_API_MAX_CHANNELS);
    hd_str_printf(&body, ",\"c%d\"]}", HD_API_MAX_CHANNELS);
    push_expect(c, "", "application/json", body.p, 422, "Unprocessable Content",
                "{\"error\":\"too many channels in one push (at most 1000)\"}");
    /* In a batch: the item's index. */
    hd_str batch = HD_STR_INIT;
    hd_str_printf(&batch, "[{\"channel\":\"a\",\"event\":\"e\",\"data\":1},%s]", body.p);
    push_expect(c, "", "application/json", batch.p, 422, "Unprocessable Content",
                "{\"error\":\"too many channels in one push (at most 1000)\",\"index\":1}");
    /* A batch of one item too many. */
    hd_str_reset(&batch);
    hd_str_addc(&batch, '[');
    for (int i = 0; i <= HD_API_MAX_CHANNELS; i++)
        hd_str_printf(&batch, "%s{\"channel\":\"a\",\"event\":\"e\",\"data\":1}", i ? "," : "");
    hd_str_addc(&batch, ']');
    push_expect(c, "", "application/json", batch.p, 422, "Unprocessable Content",
                "{\"error\":\"Invalid push arguments: channel, data, event are required.\","
                "\"index\":0}");
    assert_int_equal(srv.st.publishes, HD_API_MAX_CHANNELS);
    hd_str_free(&body);
    hd_str_free(&body_ok);
    hd_str_free(&answer);
    hd_str_free(&batch);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- topic info and presence ----------------------------------------------------------------- */

static char *topic_json(const char *topic, int subs, int listening, const char *policy)
{
    char *s = malloc(1024);
    snprintf(s, 1024, "{\"topic\":\"%s\",\"subscribers\":%d,\"listening\":%s,\"policy\":%s}",
             topic, subs, listening ? "true" : "false", policy);
    return s;
}

static const char default_policy[] =
    "{\"tracked\":true,\"presence\":false,\"throttle_ms\":0,\"debounce_ms\":0,\"max_wait_ms\":0,"
    "\"coalesce\":\"none\",\"max_queue_bytes\":0,\"on_overflow\":\"close\","
    "\"history_size\":0,\"history_ttl_ms\":300000,\"recover_max\":300}";

static void expect_topic(cli *c, const char *path, const char *want)
{
    char req[512];
    snprintf(req, sizeof req, "GET /api/topics/%s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    roundtrip(c, req, 200, "OK", "", want);
}

/* An unknown topic (policy from the rules, not created by asking), a
 * joined one, an untracked one (always "listening"), a rule's fields. */
static void test_topic_info(void **st)
{
    (void)st;
    cli *c = cli_new();
    char *want = topic_json("room", 0, 0, default_policy);
    expect_topic(c, "room", want);
    free(want);
    assert_null(hd_topics_find(&srv.eng.topics, "room", 4));
    cli *ws = ws_client();
    join(ws, "1", "room");
    want = topic_json("room", 1, 1, default_policy);
    expect_topic(c, "room", want);
    free(want);
    want = topic_json("public:x", 0, 1,
                      "{\"tracked\":false,\"presence\":false,\"throttle_ms\":0,\"debounce_ms\":0,"
                      "\"max_wait_ms\":0,\"coalesce\":\"none\",\"max_queue_bytes\":0,"
                      "\"on_overflow\":\"close\",\"history_size\":0,\"history_ttl_ms\":300000,\"recover_max\":300}");
    expect_topic(c, "public%3Ax", want);
    free(want);
    static const char feed_policy[] =
        "{\"tracked\":true,\"presence\":true,\"throttle_ms\":50,\"debounce_ms\":0,"
        "\"max_wait_ms\":0,\"coalesce\":\"latest\",\"max_queue_bytes\":4096,"
        "\"on_overflow\":\"drop_oldest\",\"history_size\":0,\"history_ttl_ms\":300000,\"recover_max\":300}";
    want = topic_json("feed:1", 0, 0, feed_policy);
    expect_topic(c, "feed:1", want);
    free(want);
    /* Joined, the cached policy says the same. */
    join(ws, "2", "feed:1");
    char *frame = next_frame(ws, &(int){0}); /* presence_state (presence = true) */
    assert_non_null(strstr(frame, "\"presence_state\""));
    free(frame);
    want = topic_json("feed:1", 1, 1, feed_policy);
    expect_topic(c, "feed:1", want);
    free(want);
    /* The name is escaped in the answer. */
    want = topic_json("a\\\"b", 0, 0, default_policy);
    expect_topic(c, "a%22b", want);
    free(want);
    cli_free(ws);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* Presence of a topic: {} when nobody is there, one key per socket
 * (connection id without an identity), gone with the socket. */
static void test_presence_info(void **st)
{
    (void)st;
    char *p = presence_summary("room");
    assert_string_equal(p, "");
    free(p);
    char *body = get_body("/api/presence/room");
    assert_string_equal(body, "{}");
    free(body);
    cli *a = ws_client();
    cli *b = ws_client();
    join(a, "1", "room");
    join(b, "1", "room");
    join(b, "2", "other");
    uint64_t ida = 0, idb = 0;
    for (hd_conn *c = srv.net.conns; c; c = c->next) {
        if (c->kind != HD_CONN_WS) continue;
        if (c->nsubs == 1) ida = c->id;
        else idb = c->id;
    }
    char want[128], sa[24], sb[24];
    snprintf(sa, sizeof sa, "%llu", (unsigned long long)ida);
    snprintf(sb, sizeof sb, "%llu", (unsigned long long)idb);
    int a_first = strcmp(sa, sb) < 0; /* the summary sorts its keys as strings */
    snprintf(want, sizeof want, "%s:1,%s:1", a_first ? sa : sb, a_first ? sb : sa);
    p = presence_summary("room");
    assert_string_equal(p, want);
    free(p);
    snprintf(want, sizeof want, "%llu:1", (unsigned long long)idb);
    p = presence_summary("other");
    assert_string_equal(p, want);
    free(p);
    cli_free(b);
    RUN_UNTIL(srv.net.nws == 1);
    snprintf(want, sizeof want, "%llu:1", (unsigned long long)ida);
    p = presence_summary("room");
    assert_string_equal(p, want);
    free(p);
    body = get_body("/api/presence/other");
    assert_string_equal(body, "{}");
    free(body);
    cli_free(a);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- routes added with hd_api_route --------------------------------------------------------- */

static int hello_calls;
static int hello_ud;

static void route_hello(void *ud, hd_conn *c, hd_http_req *r)
{
    assert_ptr_equal(ud, &hello_ud);
    hello_calls++;
    static const char body[] = "{\"hello\":true}";
    hd_http_respond(c, r, 200, "application/json", body, sizeof body - 1, NULL, 0);
}

/* A route added on the running server is dispatched, method-checked and
 * gated like the built-in ones. */
static void test_custom_route(void **st)
{
    (void)st;
    hello_calls = 0;
    assert_int_equal(hd_api_route(&srv.api, "/custom", HD_ROUTE_GET | HD_ROUTE_AUTH, route_hello,
                                  &hello_ud),
                     0);
    cli *c = cli_new();
    roundtrip(c, "GET /custom HTTP/1.1\r\nHost: x\r\n\r\n", 403, "Forbidden", "", forbidden);
    roundtrip(c, "POST /custom HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405,
              "Method Not Allowed", "Allow: GET, HEAD\r\n", not_allowed);
    assert_int_equal(hello_calls, 0);
    roundtrip(c, "GET /custom HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n\r\n", 200,
              "OK", "", "{\"hello\":true}");
    roundtrip(c, "GET /custom HTTP/1.1\r\nHost: x\r\nX-Verdict: allow\r\n\r\n", 200, "OK", "",
              "{\"hello\":true}");
    cli_sends(c, "HEAD /custom?x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n\r\n");
    RUN_UNTIL(strstr(c->in.p, "\r\n\r\n"));
    assert_string_equal(c->in.p, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 14\r\nCache-Control: no-store\r\n"
                                 "Connection: keep-alive\r\n\r\n");
    consume(c, c->in.len);
    assert_int_equal(hello_calls, 3);
    roundtrip(c, "GET /custom/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n\r\n", 404,
              "Not Found", "", "{\"error\":\"not found\"}");
    assert_int_equal(hello_calls, 3);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* The table holds HD_API_MAX_ROUTES routes; one more is HD_ELIMIT and
 * changes nothing. */
static void test_max_routes(void **st)
{
    (void)st;
    size_t before = srv.api.nroutes;
    assert_true(before > 0 && before < HD_API_MAX_ROUTES);
    size_t added = 0;
    while (hd_api_route(&srv.api, "/filler", HD_ROUTE_GET, route_hello, &hello_ud) == 0) {
        added++;
        assert_true(added <= HD_API_MAX_ROUTES);
    }
    assert_int_equal(before + added, HD_API_MAX_ROUTES);
    assert_int_equal(srv.api.nroutes, HD_API_MAX_ROUTES);
    assert_int_equal(hd_api_route(&srv.api, "/more", HD_ROUTE_GET, route_hello, &hello_ud),
                     HD_ELIMIT);
    assert_int_equal(srv.api.nroutes, HD_API_MAX_ROUTES);
    /* The first routes still answer, the refused one does not exist. */
    cli *c = cli_new();
    roundtrip(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "OK", "", "{\"status\":\"ok\"}");
    roundtrip(c, presence_t, 200, "OK", "", "{}");
    roundtrip(c, "GET /more HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Not Found", "",
              "{\"error\":\"not found\"}");
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_not_found, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_methods, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_auth_loopback_only, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_auth_token, setup_token, teardown),
        cmocka_unit_test_setup_teardown(test_auth_hook_without_token, setup_hook_no_token,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_push_batch_validation, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_push_form_and_query, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_push_content_types, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_push_multipart, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_push_limits, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_topic_info, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_presence_info, setup_api, teardown),
        cmocka_unit_test_setup_teardown(test_custom_route, setup_token, teardown),
        cmocka_unit_test_setup_teardown(test_max_routes, setup_api, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
