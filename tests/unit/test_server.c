/* tests/unit/test_server.c: loop tests. A server and libuv clients share
 * one loop; each test drives the loop until what it waits for arrives
 * (bounded), compares exact bytes, then stops the server and checks that
 * on_stopped ran once and uv_loop_close() succeeds: nothing leaked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api.h"
#include "buf.h"
#include "config.h"
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

/* ---- tests ------------------------------------------------------------------------------- */

static const char healthz_body[] = "{\"status\":\"ok\"}";

static void test_http_exact(void **st)
{
    (void)st;
    cli *c = cli_new();
    cli_sends(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    char *got = next_response(c);
    assert_string_equal(got, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             "Content-Length: 15\r\nCache-Control: no-store\r\n"
                             "Connection: keep-alive\r\n\r\n{\"status\":\"ok\"}");
    free(got);
    /* A pipelined pair (and a third) in one write: answered in order. */
    cli_sends(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(c, 200, "OK", "keep-alive", "", healthz_body);
    expect_response(c, 200, "OK", "keep-alive", "", "{\"status\":\"ready\"}");
    expect_response(c, 404, "Not Found", "keep-alive", "", "{\"error\":\"not found\"}");
    /* The same pair a byte at a time. */
    const char *pair = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /healthz HTTP/1.1\r\n"
                       "Host: x\r\nContent-Length: 3\r\n\r\nabc";
    for (size_t i = 0; pair[i]; i++) {
        cli_send(c, pair + i, 1);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    expect_response(c, 200, "OK", "keep-alive", "", healthz_body);
    expect_response(c, 405, "Method Not Allowed", "keep-alive", "Allow: GET, HEAD\r\n",
                    "{\"error\":\"method not allowed\"}");
    /* Chunked body. */
    static const char *const chunks[] = {"{\"channel\"", ":\"nobody\",\"event\":\"e\",\"data\"", ":1}"};
    cli_sends(c, "POST /api/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Type: application/json\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        char line[64];
        snprintf(line, sizeof line, "%zx\r\n%s\r\n", strlen(chunks[i]), chunks[i]);
        cli_sends(c, line);
    }
    cli_sends(c, "0\r\n\r\n");
    expect_response(c, 200, "OK", "keep-alive", "",
                    "{\"channel\":[\"nobody\"],\"data\":1,\"event\":\"e\"}");
    assert_int_equal(c->eof, 0);
    /* Connection: close is honoured: the answer, then EOF. */
    cli_sends(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    expect_response(c, 200, "OK", "close", "", healthz_body);
    RUN_UNTIL(c->eof);
    assert_int_equal(c->in.len, 0);
    cli_free(c);
    /* HTTP/1.0 without keep-alive closes too. */
    c = cli_new();
    cli_sends(c, "GET /healthz HTTP/1.0\r\n\r\n");
    expect_response(c, 200, "OK", "close", "", healthz_body);
    RUN_UNTIL(c->eof);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
    assert_true(srv.st.http_requests >= 9);
}

static void test_http_errors(void **st)
{
    (void)st;
    /* Over max_body_bytes (1000), announced: 413 and close. */
    cli *c = cli_new();
    cli_sends(c, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n");
    expect_response(c, 413, "Content Too Large", "close", "", "{\"error\":\"request body too large\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    /* Over it in chunks. */
    c = cli_new();
    char body[1200];
    memset(body, ' ', sizeof body);
    char head[128];
    snprintf(head, sizeof head, "POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%zx\r\n",
             sizeof body);
    cli_sends(c, head);
    cli_send(c, body, sizeof body);
    expect_response(c, 413, "Content Too Large", "close", "", "{\"error\":\"request body too large\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    /* Headers over max_header_bytes (1024). */
    c = cli_new();
    char big[1100];
    memset(big, 'h', sizeof big - 1);
    big[sizeof big - 1] = 0;
    cli_sends(c, "GET /healthz HTTP/1.1\r\nX-Big: ");
    cli_sends(c, big);
    cli_sends(c, "\r\n\r\n");
    expect_response(c, 431, "Request Header Fields Too Large", "close", "",
                    "{\"error\":\"request header fields too large\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    /* A URL over max_url_bytes (256). */
    c = cli_new();
    cli_sends(c, "GET /");
    cli_send(c, big, 300);
    cli_sends(c, " HTTP/1.1\r\n\r\n");
    expect_response(c, 414, "URI Too Long", "close", "", "{\"error\":\"URI too long\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    /* More than 64 headers. */
    c = cli_new();
    cli_sends(c, "GET /healthz HTTP/1.1\r\n");
    for (int i = 0; i < 65; i++) cli_sends(c, "A: b\r\n");
    cli_sends(c, "\r\n");
    expect_response(c, 431, "Request Header Fields Too Large", "close", "",
                    "{\"error\":\"request header fields too large\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    /* Not HTTP. */
    c = cli_new();
    cli_sends(c, "HELLO\r\n\r\n");
    char *r = next_response(c);
    assert_memory_equal(r, "HTTP/1.1 400 Bad Request\r\n", 26);
    assert_non_null(strstr(r, "Connection: close\r\n"));
    assert_non_null(strstr(r, "{\"error\":\"bad request: "));
    free(r);
    RUN_UNTIL(c->eof);
    cli_free(c);
    /* A WebSocket path without the upgrade. */
    c = cli_new();
    cli_sends(c, "GET /socket/websocket HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(c, 426, "Upgrade Required", "keep-alive", "Upgrade: websocket\r\n",
                    "{\"error\":\"upgrade required: this is a WebSocket endpoint\"}");
    /* A handshake with a wrong version, key or vsn: refused and closed. */
    cli_sends(c, "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 8\r\n\r\n");
    expect_response(c, 400, "Bad Request", "close", "Sec-WebSocket-Version: 13\r\n",
                    "{\"error\":\"bad websocket handshake: Sec-WebSocket-Version must be 13\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    c = cli_new();
    cli_sends(c, "GET /socket/websocket?vsn=3.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n");
    expect_response(c, 403, "Forbidden", "close", "", "{\"error\":\"unsupported vsn\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    c = cli_new();
    cli_sends(c, "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n");
    expect_response(c, 400, "Bad Request", "close", "",
                    "{\"error\":\"bad websocket handshake: invalid Sec-WebSocket-Key\"}");
    RUN_UNTIL(c->eof);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* A request that asks to switch protocols on a path that is not a
 * WebSocket mount is answered normally; the connection then either goes
 * on serving requests or closes. It must not sit there ignoring them. */
static void test_upgrade_elsewhere(void **st)
{
    (void)st;
    static const char *const firsts[] = {
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    };
    int hung = 0;
    for (int i = 0; i < 2; i++) {
        cli *c = cli_new();
        cli_sends(c, firsts[i]);
        char *r = next_response(c);
        free(r);
        cli_sends(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        uint64_t end = uv_now(&loop) + 1000;
        while (!c->eof && response_len(c) == 0 && uv_now(&loop) < end) uv_run(&loop, UV_RUN_ONCE);
        if (!c->eof && response_len(c) == 0) {
            print_error("after \"%.40s...\" the next request got no answer and the connection "
                        "stays open\n", firsts[i]);
            hung++;
        }
        cli_free(c);
    }
    RUN_UNTIL(srv.net.nconns == 0);
    assert_int_equal(hung, 0);
}

/* Every JSON body is valid JSON (so UTF-8), whatever bytes the request
 * had: a topic name that is not UTF-8 echoed by /api/topics, or the part
 * of a bad JSON body that jansson's error message quotes (it cuts a
 * 2-byte character in half here). */
static void test_json_bodies_are_utf8(void **st)
{
    (void)st;
    static const char *const reqs[] = {
        "GET /api/topics/%FF%FEa HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 4\r\n\r\n\"\\\xca\x88",
    };
    int bad = 0;
    for (int i = 0; i < 2; i++) {
        cli *c = cli_new();
        cli_sends(c, reqs[i]);
        char *r = next_response(c);
        const char *body = strstr(r, "\r\n\r\n") + 4;
        json_error_t e;
        json_t *j = json_loads(body, JSON_ALLOW_NUL, &e);
        if (!j) {
            print_error("request %d: the response body is not JSON (%s): %s\n", i, e.text, body);
            bad++;
        }
        json_decref(j);
        free(r);
        cli_free(c);
    }
    RUN_UNTIL(srv.net.nconns == 0);
    assert_int_equal(bad, 0);
}

/* A response to HEAD has no content (RFC 9110 9.3.2): a client reading
 * pipelined responses takes the next bytes as the next status line. */
static void test_head(void **st)
{
    (void)st;
    cli *c = cli_new();
    cli_sends(c, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    /* Both heads have arrived, so whatever the first response carried
     * after its head is here too (the stream is ordered). */
    RUN_UNTIL(strstr(c->in.p, "\r\n\r\n") && strstr(strstr(c->in.p, "\r\n\r\n") + 4, "\r\n\r\n"));
    const char *after = strstr(c->in.p, "\r\n\r\n") + 4;
    if (strncmp(after, "HTTP/1.1 ", 9) != 0)
        fail_msg("the response to HEAD carries content: %.60s", after);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

static void test_push_and_publish(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room:1");
    assert_int_equal(srv.net.nws, 1);
    assert_non_null(hd_topics_find(&srv.eng.topics, "room:1", 6));
    /* hd_api_publish: exactly the frame the subscriber receives. */
    assert_int_equal(hd_api_publish(&srv.api, "room:1", 6, "e", 1, "{\"a\":1}", 7), 1);
    expect_text(ws, "[null,null,\"room:1\",\"msg\",{\"data\":{\"a\":1},\"event\":\"e\"}]");
    assert_int_equal(hd_api_publish(&srv.api, "room:2", 6, "e", 1, "1", 1), 0);
    /* Through the HTTP API (from loopback: no token needed). */
    cli *h = cli_new();
    const char *json = "{\"channel\":\"room:1\",\"event\":\"e\",\"data\":{\"a\":1}}";
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(json), json);
    cli_sends(h, req);
    expect_response(h, 200, "OK", "keep-alive", "", "{\"channel\":[\"room:1\"],\"data\":{\"a\":1},\"event\":\"e\"}");
    expect_text(ws, "[null,null,\"room:1\",\"msg\",{\"data\":{\"a\":1},\"event\":\"e\"}]");
    /* A form, with a list of channels (one duplicate) and escapes. */
    const char *form = "channel[]=room%3A1&channel[]=other&channel[]=room:1&event=ev+1&data=x%22y";
    snprintf(req, sizeof req,
             "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(form), form);
    cli_sends(h, req);
    expect_response(h, 200, "OK", "keep-alive", "",
                    "{\"channel\":[\"room:1\",\"other\"],\"data\":\"x\\\"y\",\"event\":\"ev 1\"}");
    expect_text(ws, "[null,null,\"room:1\",\"msg\",{\"data\":\"x\\\"y\",\"event\":\"ev 1\"}]");
    /* A batch. */
    const char *batch = "[{\"channel\":\"room:1\",\"event\":\"a\",\"data\":null},"
                        "{\"channel\":[\"room:1\"],\"event\":\"b\",\"data\":[1,\"\\u00e9\"]}]";
    snprintf(req, sizeof req, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(batch), batch);
    cli_sends(h, req);
    expect_response(h, 200, "OK", "keep-alive", "",
                    "[{\"channel\":[\"room:1\"],\"data\":null,\"event\":\"a\"},"
                    "{\"channel\":[\"room:1\"],\"data\":[1,\"\xc3\xa9\"],\"event\":\"b\"}]");
    expect_text(ws, "[null,null,\"room:1\",\"msg\",{\"data\":null,\"event\":\"a\"}]");
    expect_text(ws, "[null,null,\"room:1\",\"msg\",{\"data\":[1,\"\xc3\xa9\"],\"event\":\"b\"}]");
    /* Refusals. */
    const char *bad = "{\"channel\":\"room:1\",\"data\":1}";
    snprintf(req, sizeof req,
             "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(bad), bad);
    cli_sends(h, req);
    expect_response(h, 422, "Unprocessable Content", "keep-alive", "",
                    "{\"error\":\"Invalid push arguments: channel, data, event are required.\"}");
    cli_sends(h, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 2\r\n\r\n{]");
    char *r = next_response(h);
    assert_memory_equal(r, "HTTP/1.1 400 Bad Request\r\n", 26);
    assert_non_null(strstr(r, "{\"error\":\"invalid JSON: "));
    free(r);
    cli_sends(h, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                 "Content-Length: 2\r\n\r\n{}");
    r = next_response(h);
    assert_memory_equal(r, "HTTP/1.1 415 Unsupported Media Type\r\n", 37);
    free(r);
    cli_sends(h, "GET /api/push HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(h, 405, "Method Not Allowed", "keep-alive", "Allow: POST\r\n",
                    "{\"error\":\"method not allowed\"}");
    /* Topic info. */
    cli_sends(h, "GET /api/topics/room%3A1 HTTP/1.1\r\nHost: x\r\n\r\n");
    r = next_response(h);
    assert_non_null(strstr(r, "\r\n\r\n{\"topic\":\"room:1\",\"subscribers\":1,\"listening\":true,"));
    free(r);
    /* Nothing else reached the socket: the next frame is a marker. */
    assert_int_equal(hd_api_publish(&srv.api, "room:1", 6, "end", 3, "0", 1), 1);
    expect_text(ws, "[null,null,\"room:1\",\"msg\",{\"data\":0,\"event\":\"end\"}]");
    assert_int_equal(ws->in.len, 0);
    cli_free(h);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
    assert_null(hd_topics_find(&srv.eng.topics, "room:1", 6)); /* freed with its last subscriber */
    assert_int_equal(srv.eng.topics.count, 0);
}

static void test_phoenix(void **st)
{
    (void)st;
    cli *ws = ws_client();
    ws_text(ws, "[null,\"2\",\"phoenix\",\"heartbeat\",{}]");
    expect_text(ws, "[null,\"2\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    join(ws, "3", "a");
    join(ws, "4", "b");
    /* max_topics_per_socket is 2. */
    ws_text(ws, "[\"5\",\"5\",\"c\",\"phx_join\",{}]");
    expect_text(ws, "[\"5\",\"5\",\"c\",\"phx_reply\",{\"status\":\"error\",\"response\":{\"reason\":\"too many channels joined\"}}]");
    /* A second join of a topic closes the first channel. */
    ws_text(ws, "[\"6\",\"6\",\"a\",\"phx_join\",{}]");
    expect_text(ws, "[\"3\",\"3\",\"a\",\"phx_close\",{}]");
    expect_text(ws, "[\"6\",\"6\",\"a\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    ws_text(ws, "[\"4\",\"7\",\"b\",\"phx_leave\",{}]");
    expect_text(ws, "[\"4\",\"7\",\"b\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    expect_text(ws, "[\"4\",\"4\",\"b\",\"phx_close\",{}]");
    assert_null(hd_topics_find(&srv.eng.topics, "b", 1));
    /* A push on a topic not joined. */
    ws_text(ws, "[null,\"8\",\"zzz\",\"shout\",{}]");
    expect_text(ws, "[null,\"8\",\"zzz\",\"phx_reply\",{\"status\":\"error\",\"response\":{\"reason\":\"unmatched topic\"}}]");
    /* Invalid topics. */
    ws_text(ws, "[null,\"9\",\"\",\"phx_join\",{}]");
    expect_text(ws, "[null,\"9\",\"\",\"phx_reply\",{\"status\":\"error\",\"response\":{\"reason\":\"invalid topic\"}}]");
    char longt[256 + 64], want[256 + 160], name[257];
    memset(name, 't', 256);
    name[256] = 0;
    snprintf(longt, sizeof longt, "[null,\"10\",\"%s\",\"phx_join\",{}]", name);
    ws_text(ws, longt); /* 256 bytes: one more than a topic may have */
    snprintf(want, sizeof want, "[null,\"10\",\"%s\",\"phx_reply\",{\"status\":\"error\","
             "\"response\":{\"reason\":\"invalid topic\"}}]", name);
    expect_text(ws, want);
    /* Ping: a pong with the same payload; a message split in fragments. */
    ws_send(ws, 9, "ping!", 5);
    expect_frame(ws, 10, "ping!", 5);
    ws_send_b0(ws, 0x01, "[null", 5);
    ws_send_b0(ws, 0x89, "", 0); /* a ping between fragments */
    const char *rest = ",\"11\",\"phoenix\",\"heartbeat\",{}]";
    ws_send_b0(ws, 0x80, rest, strlen(rest));
    expect_frame(ws, 10, "", 0);
    expect_text(ws, "[null,\"11\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    /* The close handshake: our close echoes the code, then TCP closes. */
    ws_send(ws, 8, "\x0f\xa0" "bye", 5);
    expect_frame(ws, 8, "\x0f\xa0", 2);
    RUN_UNTIL(ws->eof);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
    assert_int_equal(srv.eng.topics.count, 0);
}

static void test_ws_errors(void **st)
{
    (void)st;
    static const struct {
        const char *msg;
        int binary;
        uint16_t code;
    } cases[] = {
        {"not json", 0, 1007},
        {"{\"a\":1}", 0, 1007},
        {"[null,null,\"t\",\"phx_join\"]", 0, 1007},
        {"[1,null,\"t\",\"phx_join\",{}]", 0, 1007},
        {"[null,null,\"t\",\"phx_join\",[]]", 0, 1007},
        {"[null,null,\"t\",\"phx_join\",{}]", 1, 1007}, /* binary: not a V2 binary push */
        {"\xc3\x28", 0, 1007}, /* not UTF-8 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cli *ws = ws_client();
        ws_send(ws, cases[i].binary ? 2 : 1, cases[i].msg, strlen(cases[i].msg));
        int op;
        char *p = next_frame(ws, &op);
        assert_int_equal(op, 8);
        assert_int_equal((uint8_t)p[0] << 8 | (uint8_t)p[1], cases[i].code);
        free(p);
        /* The client answers the close; the server ends TCP. */
        ws_send(ws, 8, "", 0);
        RUN_UNTIL(ws->eof);
        cli_free(ws);
    }
    /* An unmasked frame: 1002 and the connection ends. */
    cli *ws = ws_client();
    cli_send(ws, "\x81\x02hi", 4);
    int op;
    char *p = next_frame(ws, &op);
    assert_int_equal(op, 8);
    assert_int_equal((uint8_t)p[0] << 8 | (uint8_t)p[1], 1002);
    free(p);
    RUN_UNTIL(ws->eof);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* hd_server_stop with clients still connected: they see EOF, the server
 * stops once, and the loop closes (teardown). */
static void test_stop_with_clients(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room:1");
    cli *h = cli_new();
    cli_sends(h, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(h, 200, "OK", "keep-alive", "", healthz_body);
    cli *idle = cli_new();
    RUN_UNTIL(srv.net.nconns == 3);
    hd_server_stop(&srv);
    hd_server_stop(&srv); /* twice is fine */
    RUN_UNTIL(ws->eof && h->eof && idle->eof);
    RUN_UNTIL(stopped == 1);
    assert_int_equal(srv.net.nconns, 0);
    assert_int_equal(srv.eng.topics.count, 0);
    cli_free(ws);
    cli_free(h);
    cli_free(idle);
}

/* Two servers in one loop, each with its own client; both stop; the loop
 * closes with nothing open. */
static void test_two_servers_one_loop(void **st)
{
    (void)st;
    hd_server other;
    assert_int_equal(hd_server_init(&other, &loop, &cfg), 0);
    char err[256];
    assert_int_equal(hd_script_start(&other.sc, err, sizeof err), 0);
    assert_int_equal(hd_server_start(&other), 0);
    assert_int_not_equal(other.port, srv.port);
    cli *a = ws_client();
    join(a, "1", "room:1");
    /* A client of the other server. */
    int port = srv.port;
    srv.port = other.port;
    cli *b = ws_client();
    srv.port = port;
    char m[] = "[\"1\",\"1\",\"room:1\",\"phx_join\",{}]";
    ws_text(b, m);
    expect_text(b, "[\"1\",\"1\",\"room:1\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    /* Publishes stay on their server. */
    assert_int_equal(hd_api_publish(&other.api, "room:1", 6, "x", 1, "2", 1), 1);
    expect_text(b, "[null,null,\"room:1\",\"msg\",{\"data\":2,\"event\":\"x\"}]");
    assert_int_equal(hd_api_publish(&srv.api, "room:1", 6, "y", 1, "3", 1), 1);
    expect_text(a, "[null,null,\"room:1\",\"msg\",{\"data\":3,\"event\":\"y\"}]");
    /* Neither got the other server's publish: the next frame of each is a
     * marker from its own server. */
    assert_int_equal(hd_api_publish(&other.api, "room:1", 6, "end", 3, "0", 1), 1);
    assert_int_equal(hd_api_publish(&srv.api, "room:1", 6, "end", 3, "0", 1), 1);
    expect_text(b, "[null,null,\"room:1\",\"msg\",{\"data\":0,\"event\":\"end\"}]");
    expect_text(a, "[null,null,\"room:1\",\"msg\",{\"data\":0,\"event\":\"end\"}]");
    assert_int_equal(a->in.len + b->in.len, 0);
    assert_int_equal(other.st.deliveries, 2);
    assert_int_equal(srv.st.deliveries, 2);
    hd_server_stop(&other);
    RUN_UNTIL(b->eof && other.state == HD_STOPPED);
    assert_int_equal(a->eof, 0); /* the first server still serves */
    hd_server_free(&other);
    cli_free(a);
    cli_free(b);
}

/* timeouts.http_head_ms: a request head (the WebSocket handshake too) that
 * is not complete in time gets 408 and the connection closes, however the
 * bytes trickle; a connection that sends nothing at all too; a complete
 * head is not cut while its answer is on the way, and keep-alive between
 * requests is http_idle_ms's business. */
static int setup_head(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "timeouts = { http_head_ms = 150, http_idle_ms = 60000 }\n"
                      "log = { level = 'warn' }\n");
}

static void test_head_deadline(void **st)
{
    (void)st;
    static const char body[] = "{\"error\":\"request head not complete in time\"}";
    /* Trickled: one byte each loop turn until the answer comes (bounded). */
    cli *slow = cli_new();
    const char *head = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    uint64_t last = 0;
    for (size_t i = 0, n = 0; response_len(slow) == 0 && n < 300 && i < 1000000; i++) {
        uv_update_time(&loop);
        if (uv_now(&loop) - last >= 10) { /* a byte every 10 ms of loop time */
            last = uv_now(&loop);
            cli_send(slow, n < strlen(head) ? head + n : "a", 1);
            n++;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    expect_response(slow, 408, "Request Timeout", "close", "", body);
    RUN_UNTIL(slow->eof);
    /* Silent. */
    cli *quiet = cli_new();
    expect_response(quiet, 408, "Request Timeout", "close", "", body);
    RUN_UNTIL(quiet->eof);
    /* Empty lines trickled in: llhttp skips them before a request line, but
     * they are bytes of a head all the same. */
    cli *blank = cli_new();
    last = 0;
    for (size_t i = 0, n = 0; response_len(blank) == 0 && n < 300 && i < 1000000; i++) {
        uv_update_time(&loop);
        if (uv_now(&loop) - last >= 10) {
            last = uv_now(&loop);
            cli_send(blank, "\r\n", 2);
            n++;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    expect_response(blank, 408, "Request Timeout", "close", "", body);
    RUN_UNTIL(blank->eof);
    assert_int_equal(srv.st.http_head_timeouts, 3);
    /* A whole request is answered, and the connection is kept. */
    cli *ok = cli_new();
    cli_sends(ok, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_response(ok, 200, "OK", "keep-alive", "", "{\"status\":\"ok\"}");
    cli_free(slow);
    cli_free(quiet);
    cli_free(blank);
    cli_free(ok);
}

/* timeouts.ws_message_ms: a fragmented message, or a frame, begun and not
 * finished in time closes the connection with 1008, however slowly the
 * fragments trickle (each one would reset the idle timer); a fragmented
 * message finished in time is answered. */
static int setup_message(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "timeouts = { ws_message_ms = 150, ws_idle_ms = 60000 }\n"
                      "log = { level = 'warn' }\n");
}

/* The next frame is a close with code and reason; then TCP ends. */
static void expect_close(cli *ws, uint16_t code, const char *reason)
{
    int op;
    char *p = next_frame(ws, &op);
    assert_int_equal(op, 8);
    assert_int_equal((uint8_t)p[0] << 8 | (uint8_t)p[1], code);
    assert_string_equal(p + 2, reason);
    free(p);
    RUN_UNTIL(ws->eof);
}

static void test_message_deadline(void **st)
{
    (void)st;
    /* Finished in time: answered, and the connection stays. */
    cli *ok = ws_client();
    ws_send_b0(ok, 0x01, "[null", 5);
    const char *rest = ",\"1\",\"phoenix\",\"heartbeat\",{}]";
    ws_send_b0(ok, 0x80, rest, strlen(rest));
    expect_text(ok, "[null,\"1\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    /* Trickled: a continuation frame each 10 ms of loop time until the
     * close comes (bounded). */
    cli *slow = ws_client();
    ws_send_b0(slow, 0x01, "[null", 5);
    uint64_t last = uv_now(&loop);
    int op;
    size_t pl, pn;
    for (size_t i = 0, n = 0; !frame_len(slow, &op, &pl, &pn) && n < 300 && i < 1000000; i++) {
        uv_update_time(&loop);
        if (uv_now(&loop) - last >= 10) {
            last = uv_now(&loop);
            ws_send_b0(slow, 0x00, " ", 1);
            n++;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    expect_close(slow, 1008, "message not complete in time");
    /* Half a frame header, then nothing. */
    cli *half = ws_client();
    cli_send(half, "\x81", 1);
    expect_close(half, 1008, "message not complete in time");
    assert_int_equal(srv.st.ws_message_timeouts, 2);
    /* The first client was never cut. */
    ws_text(ok, "[null,\"2\",\"phoenix\",\"heartbeat\",{}]");
    expect_text(ok, "[null,\"2\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    cli_free(ok);
    cli_free(slow);
    cli_free(half);
}

/* limits.max_inbound_bytes: when all partial messages together go over
 * it, the connection holding the largest is closed with 1009 and the others
 * carry on. */
static int setup_inbound(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "limits = { max_inbound_bytes = 4096 }\n"
                      "log = { level = 'warn' }\n");
}

/* A first fragment of a heartbeat padded with n spaces of JSON whitespace. */
static void begin_padded(cli *ws, size_t n)
{
    char *f = malloc(n + 5);
    memcpy(f, "[null", 5);
    memset(f + 5, ' ', n);
    ws_send_b0(ws, 0x01, f, n + 5);
    free(f);
}

static void test_inbound_limit(void **st)
{
    (void)st;
    static const char rest[] = ",\"1\",\"phoenix\",\"heartbeat\",{}]";
    static const char reply[] = "[null,\"1\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]";
    cli *a = ws_client(), *b = ws_client(), *c = ws_client();
    begin_padded(a, 1000);
    RUN_UNTIL(srv.net.inbound_bytes == 1005);
    begin_padded(b, 2000);
    RUN_UNTIL(srv.net.inbound_bytes == 3010);
    assert_int_equal(srv.st.ws_inbound_closes, 0);
    begin_padded(c, 1500); /* 4515 > 4096: b holds the most */
    expect_close(b, 1009, "inbound memory limit");
    assert_int_equal(srv.st.ws_inbound_closes, 1);
    assert_int_equal(srv.net.inbound_bytes, 1005 + 1505);
    /* The others finish their messages and are answered. */
    ws_send_b0(a, 0x80, rest, strlen(rest));
    expect_text(a, reply);
    ws_send_b0(c, 0x80, rest, strlen(rest));
    expect_text(c, reply);
    assert_int_equal(srv.net.inbound_bytes, 0);
    /* A partial message freed with its connection leaves the total. */
    begin_padded(a, 500);
    RUN_UNTIL(srv.net.inbound_bytes == 505);
    cli_free(a);
    RUN_UNTIL(srv.net.inbound_bytes == 0);
    cli_free(b);
    cli_free(c);
}

/* Request bodies count in limits.max_inbound_bytes too: over it, the
 * request holding the largest partial body is answered 503 and closed
 * (the WebSocket messages are not touched by it); a body trickled in is
 * cut by timeouts.http_body_ms however often its bytes come. */
static int setup_bodies(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "limits = { max_inbound_bytes = 4096, max_body_bytes = 100000 }\n"
                      "timeouts = { http_body_ms = 200, http_idle_ms = 60000 }\n"
                      "log = { level = 'error' }\n");
}

static void begin_body(cli *c, size_t total, size_t sent)
{
    char head[160];
    snprintf(head, sizeof head, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n", total);
    cli_sends(c, head);
    char *pad = malloc(sent);
    memset(pad, ' ', sent);
    cli_send(c, pad, sent);
    free(pad);
}

static void test_body_limits(void **st)
{
    (void)st;
    static const char shed[] = "{\"error\":\"inbound memory limit\",\"status\":500}";
    cli *ws = ws_client();
    begin_padded(ws, 1000); /* 1005 bytes of a WebSocket message */
    RUN_UNTIL(srv.net.inbound_bytes == 1005);
    cli *a = cli_new(), *b = cli_new(), *c = cli_new();
    begin_body(a, 50000, 1000);
    RUN_UNTIL(srv.net.inbound_bytes == 2005);
    begin_body(b, 50000, 1800);
    RUN_UNTIL(srv.net.inbound_bytes == 3805);
    begin_body(c, 50000, 500); /* 4305 > 4096: b holds the largest body */
    expect_response(b, 503, "Service Unavailable", "close", "", shed);
    RUN_UNTIL(b->eof);
    assert_int_equal(srv.st.http_inbound_sheds, 1);
    assert_int_equal(srv.net.inbound_bytes, 1005 + 1000 + 500);
    assert_int_equal(srv.st.ws_inbound_closes, 0);
    /* The one that pushes over is itself the largest: it is refused. */
    cli *d = cli_new();
    begin_body(d, 50000, 3000);
    expect_response(d, 503, "Service Unavailable", "close", "", shed);
    RUN_UNTIL(d->eof);
    assert_int_equal(srv.st.http_inbound_sheds, 2);
    /* The body deadline: a, then c, trickled, are cut with 408. */
    static const char late[] = "{\"error\":\"request body not complete in time\"}";
    uint64_t last = 0;
    for (size_t i = 0; response_len(c) == 0 && i < 1000000; i++) {
        uv_update_time(&loop);
        if (uv_now(&loop) - last >= 10) {
            last = uv_now(&loop);
            cli_send(c, " ", 1);
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    expect_response(c, 408, "Request Timeout", "close", "", late);
    expect_response(a, 408, "Request Timeout", "close", "", late);
    assert_int_equal(srv.st.http_body_timeouts, 2);
    RUN_UNTIL(srv.net.inbound_bytes == 1005);
    /* A whole body is answered, and what it held is given back. */
    cli *e = cli_new();
    cli_sends(e, "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 36\r\n\r\n{\"channel\":\"x\",\"event\":\"e\",\"data\":1}");
    char *r = next_response(e);
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    free(r);
    assert_int_equal(srv.net.inbound_bytes, 1005);
    cli_free(ws);
    cli_free(a);
    cli_free(b);
    cli_free(c);
    cli_free(d);
    cli_free(e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_head_deadline, setup_head, teardown),
        cmocka_unit_test_setup_teardown(test_message_deadline, setup_message, teardown),
        cmocka_unit_test_setup_teardown(test_inbound_limit, setup_inbound, teardown),
        cmocka_unit_test_setup_teardown(test_body_limits, setup_bodies, teardown),
        cmocka_unit_test_setup_teardown(test_http_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_bodies_are_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_and_publish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_phoenix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ws_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_servers_one_loop, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
