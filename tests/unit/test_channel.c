/* tests/unit/test_channel.c: the Phoenix layer (core/channel.c over
 * core/wsconn.c) on a real server (harness.h): the handshake's refusals
 * and their order, subprotocols and the bearer token, what authenticate
 * leaves on the connection, join/leave/push replies, the close codes of
 * bad frames, herald.disconnect. Hooks come from a Lua script loaded
 * through the config. Exact bytes; what test_server.c already asserts
 * (heartbeat, join limits, unmatched topic, close echo) is not repeated. */
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

static const char hooks[] =
    "local M = {}\n"
    "local calls = 0 -- pushes of event 'count' the hook saw\n"
    "function M.authenticate(req)\n"
    "  local p = req.params\n"
    "  if p.crash then error('boom') end\n"
    "  if p.deny then return nil, 'denied: ' .. p.deny end\n"
    "  if p.echo_token then return nil, 'token=' .. tostring(req.token) end\n"
    "  if p.user then return { id = p.user, assigns = { role = p.role } } end\n"
    "end\n"
    "function M.join(socket, topic, payload)\n"
    "  if topic == 'whoami' then\n"
    "    return true, { reply = { who = socket.id .. '/' .. tostring(socket.assigns.role) } }\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "function M.message(socket, topic, event, payload)\n"
    "  if event == 'kick' then return { n = herald.disconnect(payload.id) } end\n"
    "  if event == 'echo' then return payload end\n"
    "  if event == 'refuse' then return false, 'nope' end\n"
    "  if event == 'count' then calls = calls + 1; return { n = calls } end\n"
    "end\n"
    "return M\n";

static const char hooks_config[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "limits = { max_body_bytes = 1000, max_header_bytes = 1024, max_url_bytes = 256,\n"
    "           max_topics_per_socket = 2, max_connections = 1 }\n"
    "log = { level = 'error' }\n";

static int setup_hooks(void **st)
{
    (void)st;
    return setup_with_script(hooks_config, hooks);
}

/* A config as above without max_connections = 1, so that several sockets
 * may connect. */
static const char hooks_config_many[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "limits = { max_body_bytes = 1000, max_header_bytes = 1024, max_url_bytes = 256,\n"
    "           max_topics_per_socket = 2 }\n"
    "log = { level = 'error' }\n";

static int setup_hooks_many(void **st)
{
    (void)st;
    return setup_with_script(hooks_config_many, hooks);
}

/* ---- helpers ------------------------------------------------------------------------- */

static const char accept_101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\n"
                                 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

/* A WebSocket client whose handshake carries query (after '?') and extra
 * header lines; the 101 must offer proto as its subprotocol (NULL: none). */
static cli *ws_open(const char *query, const char *headers, const char *proto)
{
    cli *c = cli_new();
    char req[1024];
    snprintf(req, sizeof req,
             "GET /socket/websocket?%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n%s\r\n",
             query, headers ? headers : "");
    cli_sends(c, req);
    char *got = next_response(c);
    char want[512];
    snprintf(want, sizeof want, "%s%s%s%s\r\n", accept_101, proto ? "Sec-WebSocket-Protocol: " : "",
             proto ? proto : "", proto ? "\r\n" : "");
    assert_string_equal(got, want);
    free(got);
    return c;
}

/* The value of a line "name value" of /metrics. */
static unsigned long metric(const char *name)
{
    char *body = get_body("/metrics");
    char key[256];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(body, key);
    if (!p) fail_msg("no %s in /metrics", name);
    unsigned long v = strtoul(p + strlen(key), NULL, 10);
    free(body);
    return v;
}

/* The server's one WebSocket connection. */
static hd_conn *the_ws_conn(void)
{
    hd_conn *found = NULL;
    for (hd_conn *c = srv.net.conns; c; c = c->next) {
        if (c->kind != HD_CONN_WS) continue;
        assert_null(found);
        found = c;
    }
    assert_non_null(found);
    return found;
}

/* Answers the server's close and waits for the end of TCP. */
static void finish_close(cli *c)
{
    ws_send(c, 8, "", 0);
    RUN_UNTIL(c->eof);
    cli_free(c);
}

/* A heartbeat and its reply: the marker that nothing else came first. */
static void heartbeat(cli *c, const char *ref)
{
    char m[128], want[160];
    snprintf(m, sizeof m, "[null,\"%s\",\"phoenix\",\"heartbeat\",{}]", ref);
    snprintf(want, sizeof want,
             "[null,\"%s\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]", ref);
    ws_text(c, m);
    expect_text(c, want);
}

static const char ws_headers[] = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n";

/* ---- the handshake ------------------------------------------------------------------- */

/* Each refusal, on a request that also fails every later check, so that
 * the order of the checks shows: method, Upgrade, Connection, version,
 * key, vsn, accepting, capacity, authenticate. Each is counted in
 * herald_ws_rejected_total. */
static void test_handshake_refusals(void **st)
{
    (void)st;
    static const struct {
        const char *method, *query, *headers;
        int status;
        const char *reason, *conn, *extra, *body;
    } cases[] = {
        {"POST", "vsn=3.0.0&deny=x",
         "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
         "Sec-WebSocket-Version: 8\r\n",
         405, "Method Not Allowed", "close", "Allow: GET\r\n",
         "{\"error\":\"method not allowed\"}"},
        /* No upgrade asked (no Upgrade header): the connection stays. */
        {"GET", "vsn=3.0.0&deny=x",
         "Connection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 8\r\n", 426,
         "Upgrade Required", "keep-alive", "Upgrade: websocket\r\n",
         "{\"error\":\"upgrade required: this is a WebSocket endpoint\"}"},
        /* Another protocol asked: refused and closed. */
        {"GET", "vsn=3.0.0&deny=x",
         "Upgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
         "Sec-WebSocket-Version: 8\r\n",
         426, "Upgrade Required", "close", "Upgrade: websocket\r\n",
         "{\"error\":\"upgrade required: this is a WebSocket endpoint\"}"},
        {"GET", "vsn=3.0.0&deny=x",
         "Upgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
         "Sec-WebSocket-Version: 8\r\n",
         400, "Bad Request", "close", "",
         "{\"error\":\"bad websocket handshake: Connection must include Upgrade\"}"},
        {"GET", "vsn=3.0.0&deny=x",
         "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
         "Sec-WebSocket-Version: 8\r\n",
         400, "Bad Request", "close", "Sec-WebSocket-Version: 13\r\n",
         "{\"error\":\"bad websocket handshake: Sec-WebSocket-Version must be 13\"}"},
        {"GET", "vsn=3.0.0&deny=x",
         "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", 400,
         "Bad Request", "close", "",
         "{\"error\":\"bad websocket handshake: invalid Sec-WebSocket-Key\"}"},
        {"GET", "vsn=3.0.0&deny=x", ws_headers, 403, "Forbidden", "close", "",
         "{\"error\":\"unsupported vsn\"}"},
        {"GET", "vsn=&deny=x", ws_headers, 403, "Forbidden", "close", "",
         "{\"error\":\"unsupported vsn\"}"},
        /* (accepting is turned off for this one) */
        {"GET", "vsn=2.0.0&deny=x", ws_headers, 503, "Service Unavailable", "close", "",
         "{\"error\":\"server is shutting down\",\"status\":500}"},
        /* (one socket is open for this one: max_connections = 1) */
        {"GET", "vsn=2.0.0&deny=x", ws_headers, 503, "Service Unavailable", "close", "",
         "{\"error\":\"server at capacity\",\"status\":500}"},
        {"GET", "vsn=2.0.0&deny=x", ws_headers, 403, "Forbidden", "close", "",
         "{\"error\":\"denied: x\"}"},
        /* A hook that raises denies with the safe reason. */
        {"GET", "vsn=2.0.0&crash=1", ws_headers, 403, "Forbidden", "close", "",
         "{\"error\":\"unauthorized\"}"},
    };
    size_t n = sizeof cases / sizeof *cases;
    assert_int_equal(metric("herald_ws_rejected_total"), 0);
    cli *open = NULL;
    for (size_t i = 0; i < n; i++) {
        int shutting = strstr(cases[i].body, "shutting down") != NULL;
        int full = strstr(cases[i].body, "capacity") != NULL;
        if (shutting) srv.ch.accepting = 0;
        if (full) open = ws_client();
        cli *c = cli_new();
        char req[1024];
        snprintf(req, sizeof req, "%s /socket/websocket?%s HTTP/1.1\r\nHost: x\r\n%s\r\n",
                 cases[i].method, cases[i].query, cases[i].headers);
        cli_sends(c, req);
        expect_response(c, cases[i].status, cases[i].reason, cases[i].conn, cases[i].extra,
                        cases[i].body);
        if (strcmp(cases[i].conn, "close") == 0) RUN_UNTIL(c->eof);
        cli_free(c);
        srv.ch.accepting = 1;
        if (open) {
            cli_free(open);
            open = NULL;
            RUN_UNTIL(srv.net.nws == 0);
        }
        assert_int_equal(metric("herald_ws_rejected_total"), i + 1);
    }
    assert_int_equal(metric("herald_ws_upgrades_total"), 1); /* the one open for capacity */
    /* With the socket gone, the same user is let in. */
    cli *ws = ws_open("vsn=2.0.0&user=u", NULL, NULL);
    heartbeat(ws, "1");
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
    assert_int_equal(srv.st.ws_rejected, n);
}

/* The 101 offers "phoenix" only when the client offered it; the token of
 * a base64url.bearer.phx. subprotocol (standard or URL-safe base64, with
 * or without padding) reaches authenticate as req.token. */
static void test_subprotocols_and_token(void **st)
{
    (void)st;
    cli *c = ws_open("vsn=2.0.0", "Sec-WebSocket-Protocol: phoenix\r\n", "phoenix");
    heartbeat(c, "1");
    cli_free(c);
    RUN_UNTIL(srv.net.nws == 0);
    c = ws_open("vsn=2.0.0", "Sec-WebSocket-Protocol: chat, superchat\r\n", NULL);
    cli_free(c);
    RUN_UNTIL(srv.net.nws == 0);
    c = ws_open("vsn=2.0.0", "Sec-WebSocket-Protocol: base64url.bearer.phx.YT4_Yn4\r\n", NULL);
    cli_free(c);
    RUN_UNTIL(srv.net.nws == 0);
    c = ws_open("vsn=2.0.0",
                "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu\r\n",
                "phoenix");
    cli_free(c);
    RUN_UNTIL(srv.net.nws == 0);
    static const struct {
        const char *protocols, *body;
    } cases[] = {
        {"phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu", "{\"error\":\"token=secret-token\"}"},
        /* phoenix.js: btoa(token) without '=' */
        {"phoenix, base64url.bearer.phx.YT4/Yn4", "{\"error\":\"token=a>?b~\"}"},
        {"base64url.bearer.phx.YT4_Yn4,phoenix", "{\"error\":\"token=a>?b~\"}"},
        {"phoenix,base64url.bearer.phx.YT4/Yn4=", "{\"error\":\"token=a>?b~\"}"},
        /* The first token offered counts. */
        {"base64url.bearer.phx.c2VjcmV0LXRva2Vu, base64url.bearer.phx.YT4_Yn4",
         "{\"error\":\"token=secret-token\"}"},
        {"phoenix", "{\"error\":\"token=nil\"}"},
        {"phoenix, base64url.bearer.phx.!!!", "{\"error\":\"token=nil\"}"},
        {"phoenix, base64url.bearer.phx.", "{\"error\":\"token=nil\"}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cli *h = cli_new();
        char req[1024];
        snprintf(req, sizeof req,
                 "GET /socket/websocket?vsn=2.0.0&echo_token=1 HTTP/1.1\r\nHost: x\r\n%s"
                 "Sec-WebSocket-Protocol: %s\r\n\r\n",
                 ws_headers, cases[i].protocols);
        cli_sends(h, req);
        expect_response(h, 403, "Forbidden", "close", "", cases[i].body);
        RUN_UNTIL(h->eof);
        cli_free(h);
    }
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- identity and assigns -------------------------------------------------------------- */

/* What authenticate returned stays on the connection: hooks see
 * socket.id and socket.assigns, and presence is keyed by the identity
 * (the connection id without one). */
static void test_identity_and_assigns(void **st)
{
    (void)st;
    cli *a = ws_open("vsn=2.0.0&user=alice&role=admin", NULL, NULL);
    cli *a2 = ws_open("vsn=2.0.0&user=alice&role=guest", NULL, NULL);
    cli *anon = ws_open("vsn=2.0.0", NULL, NULL);
    ws_text(a, "[\"1\",\"1\",\"whoami\",\"phx_join\",{}]");
    expect_text(a, "[\"1\",\"1\",\"whoami\",\"phx_reply\",{\"status\":\"ok\","
                   "\"response\":{\"who\":\"alice/admin\"}}]");
    ws_text(a2, "[\"1\",\"1\",\"whoami\",\"phx_join\",{}]");
    expect_text(a2, "[\"1\",\"1\",\"whoami\",\"phx_reply\",{\"status\":\"ok\","
                    "\"response\":{\"who\":\"alice/guest\"}}]");
    /* Without an identity the socket's id is its connection id. */
    hd_conn *ac = NULL;
    for (hd_conn *c = srv.net.conns; c; c = c->next)
        if (c->kind == HD_CONN_WS && !hd_conn_identity(c)) ac = c;
    assert_non_null(ac);
    char want[256], id[32];
    snprintf(id, sizeof id, "%llu", (unsigned long long)ac->id);
    snprintf(want, sizeof want,
             "[\"1\",\"1\",\"whoami\",\"phx_reply\",{\"status\":\"ok\","
             "\"response\":{\"who\":\"%s/nil\"}}]", id);
    ws_text(anon, "[\"1\",\"1\",\"whoami\",\"phx_join\",{}]");
    expect_text(anon, want);
    assert_string_equal(ac->assigns, "{}");
    /* Presence: one key per identity, one meta per socket. */
    char *p = presence_summary("whoami");
    snprintf(want, sizeof want, "%s:1,alice:2", id);
    assert_string_equal(p, want);
    free(p);
    /* The identity index finds both of alice's sockets. */
    hd_conn *first = hd_net_find_ident(&srv.net, "alice", NULL);
    assert_non_null(first);
    hd_conn *second = hd_net_find_ident(&srv.net, "alice", first);
    assert_non_null(second);
    assert_ptr_not_equal(first, second);
    assert_null(hd_net_find_ident(&srv.net, "alice", second));
    /* Each keeps its own assigns, as JSON. */
    char both[128];
    snprintf(both, sizeof both, "%s %s", first->assigns, second->assigns);
    if (strcmp(both, "{\"role\":\"admin\"} {\"role\":\"guest\"}") != 0)
        assert_string_equal(both, "{\"role\":\"guest\"} {\"role\":\"admin\"}");
    cli_free(a);
    cli_free(a2);
    cli_free(anon);
    RUN_UNTIL(srv.net.nconns == 0);
    assert_null(hd_net_find_ident(&srv.net, "alice", NULL));
}

/* herald.disconnect(identity), from a message hook, closes every socket
 * of that identity (1001, "disconnected") and no other; the caller gets
 * the count. A socket that disconnects itself gets no reply. */
static void test_disconnect_identity(void **st)
{
    (void)st;
    cli *a1 = ws_open("vsn=2.0.0&user=alice", NULL, NULL);
    cli *a2 = ws_open("vsn=2.0.0&user=alice", NULL, NULL);
    cli *b = ws_open("vsn=2.0.0&user=bob", NULL, NULL);
    cli *c = ws_open("vsn=2.0.0&user=carol", NULL, NULL);
    join(a1, "1", "room");
    join(a2, "1", "room");
    join(b, "1", "room");
    join(c, "1", "room");
    char *p = presence_summary("room");
    assert_string_equal(p, "alice:2,bob:1,carol:1");
    free(p);
    ws_text(b, "[\"1\",\"2\",\"room\",\"kick\",{\"id\":\"alice\"}]");
    expect_text(b, "[\"1\",\"2\",\"room\",\"phx_reply\",{\"status\":\"ok\","
                   "\"response\":{\"n\":2}}]");
    expect_frame(a1, 8, "\x03\xe9" "disconnected", 14);
    expect_frame(a2, 8, "\x03\xe9" "disconnected", 14);
    /* Unlinked at once: presence and the topic no longer have them. */
    p = presence_summary("room");
    assert_string_equal(p, "bob:1,carol:1");
    free(p);
    assert_int_equal(hd_topics_find(&srv.eng.topics, "room", 4)->nsubs, 2);
    heartbeat(b, "3");
    heartbeat(c, "3");
    finish_close(a1);
    finish_close(a2);
    /* Nobody by that name: 0. */
    ws_text(b, "[\"1\",\"4\",\"room\",\"kick\",{\"id\":\"alice\"}]");
    expect_text(b, "[\"1\",\"4\",\"room\",\"phx_reply\",{\"status\":\"ok\","
                   "\"response\":{\"n\":0}}]");
    /* bob kicks bob: the close frame is all he gets. */
    ws_text(b, "[\"1\",\"5\",\"room\",\"kick\",{\"id\":\"bob\"}]");
    expect_frame(b, 8, "\x03\xe9" "disconnected", 14);
    finish_close(b);
    heartbeat(c, "6");
    assert_int_equal(metric("herald_ws_closes_sent_total{code=\"1001\"}"), 3);
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- join, leave, pushes ------------------------------------------------------------------ */

/* A leave with a stale join_ref is dropped (it raced a newer join); a
 * leave of a topic never joined is answered without phx_close; a leave
 * frees a slot of max_topics_per_socket (2). */
static void test_leave(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "a");
    join(ws, "2", "b");
    ws_text(ws, "[\"9\",\"3\",\"a\",\"phx_leave\",{}]");
    heartbeat(ws, "4"); /* no answer to the stale leave */
    assert_int_equal(hd_api_publish(&srv.api, "a", 1, "e", 1, "1", 1), 1); /* still joined */
    expect_text(ws, "[null,null,\"a\",\"msg\",{\"data\":1,\"event\":\"e\"}]");
    ws_text(ws, "[\"1\",\"5\",\"a\",\"phx_leave\",{}]");
    expect_text(ws, "[\"1\",\"5\",\"a\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    expect_text(ws, "[\"1\",\"1\",\"a\",\"phx_close\",{}]");
    assert_int_equal(hd_api_publish(&srv.api, "a", 1, "e", 1, "2", 1), 0);
    /* Never joined: ok, and nothing else. */
    ws_text(ws, "[\"7\",\"6\",\"zz\",\"phx_leave\",{}]");
    expect_text(ws, "[\"7\",\"6\",\"zz\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    heartbeat(ws, "7");
    /* The slot a left is free again. */
    join(ws, "8", "c");
    ws_text(ws, "[\"9\",\"9\",\"d\",\"phx_join\",{}]");
    expect_text(ws, "[\"9\",\"9\",\"d\",\"phx_reply\",{\"status\":\"error\",\"response\":"
                    "{\"reason\":\"too many channels joined\"}}]");
    assert_int_equal(srv.st.joins_refused, 1);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* A duplicate join replaces the channel: phx_close for the old join_ref
 * first, then one subscription (one delivery per publish, one presence
 * entry). */
static void test_duplicate_join(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room");
    ws_text(ws, "[\"2\",\"2\",\"room\",\"phx_join\",{}]");
    expect_text(ws, "[\"1\",\"1\",\"room\",\"phx_close\",{}]");
    expect_text(ws, "[\"2\",\"2\",\"room\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    assert_int_equal(hd_topics_find(&srv.eng.topics, "room", 4)->nsubs, 1);
    char *p = presence_summary("room");
    char want[64];
    snprintf(want, sizeof want, "%llu:1", (unsigned long long)the_ws_conn()->id);
    assert_string_equal(p, want);
    free(p);
    assert_int_equal(hd_api_publish(&srv.api, "room", 4, "e", 1, "1", 1), 1);
    expect_text(ws, "[null,null,\"room\",\"msg\",{\"data\":1,\"event\":\"e\"}]");
    heartbeat(ws, "3"); /* only one copy came */
    /* The old join_ref is stale now: its leave is dropped. */
    ws_text(ws, "[\"1\",\"4\",\"room\",\"phx_leave\",{}]");
    heartbeat(ws, "5");
    assert_int_equal(hd_topics_find(&srv.eng.topics, "room", 4)->nsubs, 1);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* The longest topic (255 bytes) is joined. */
static void test_longest_topic(void **st)
{
    (void)st;
    cli *ws = ws_client();
    char name[HD_TOPIC_MAX_BYTES + 1], m[512], want[512];
    memset(name, 't', HD_TOPIC_MAX_BYTES);
    name[HD_TOPIC_MAX_BYTES] = 0;
    snprintf(m, sizeof m, "[\"1\",\"1\",\"%s\",\"phx_join\",{}]", name);
    snprintf(want, sizeof want,
             "[\"1\",\"1\",\"%s\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]", name);
    ws_text(ws, m);
    expect_text(ws, want);
    assert_non_null(hd_topics_find(&srv.eng.topics, name, HD_TOPIC_MAX_BYTES));
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* "\u0000" is valid JSON (RFC 8259 7) and Phoenix servers take it: a
 * message whose payload carries it is an ordinary message, not a reason
 * to close with 1007. */
static void test_nul_escape_in_payload(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room");
    ws_text(ws, "[\"1\",\"2\",\"room\",\"shout\",{\"text\":\"a\\u0000b\"}]");
    heartbeat(ws, "3");
    cli_free(ws);
    /* In the refs, the topic or the event it is not: they are C strings. */
    static const char *const bad[] = {
        "[\"1\",\"2\",\"ro\\u0000om\",\"phx_join\",{}]",
        "[\"1\",\"2\",\"phoenix\",\"heartbeat\\u0000x\",{}]",
        "[\"1\\u0000\",\"2\",\"room\",\"phx_join\",{}]",
        "[\"1\",\"2\\u0000\",\"room\",\"phx_join\",{}]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ws = ws_client();
        ws_text(ws, bad[i]);
        expect_frame(ws, 8, "\x03\xefinvalid Phoenix message", 25); /* 1007 */
        cli_free(ws);
    }
    RUN_UNTIL(srv.net.nconns == 0);
}

/* Without a message hook a client push gets no reply. */
static void test_push_without_hook(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room");
    ws_text(ws, "[\"1\",\"2\",\"room\",\"shout\",{\"a\":1}]");
    heartbeat(ws, "3");
    assert_int_equal(srv.st.ws_msgs_in, 3);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* With one, the hook's answer is the reply: a table (ok with it), false
 * and a reason (error), nothing (no reply); a push with a stale join_ref
 * is dropped before the hook; an unjoined topic is "unmatched topic"
 * (join_ref null, as Phoenix sends it). */
static void test_push_with_hook(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "room");
    ws_text(ws, "[\"1\",\"2\",\"room\",\"echo\",{\"said\":\"hi\"}]");
    expect_text(ws, "[\"1\",\"2\",\"room\",\"phx_reply\",{\"status\":\"ok\",\"response\":"
                    "{\"said\":\"hi\"}}]");
    ws_text(ws, "[\"1\",\"3\",\"room\",\"refuse\",{}]");
    expect_text(ws, "[\"1\",\"3\",\"room\",\"phx_reply\",{\"status\":\"error\",\"response\":"
                    "{\"reason\":\"nope\"}}]");
    ws_text(ws, "[\"1\",\"4\",\"room\",\"other\",{}]");
    ws_text(ws, "[\"7\",\"5\",\"room\",\"echo\",{\"said\":\"stale\"}]");
    heartbeat(ws, "6");
    ws_text(ws, "[\"7\",\"8\",\"elsewhere\",\"echo\",{}]");
    expect_text(ws, "[null,\"8\",\"elsewhere\",\"phx_reply\",{\"status\":\"error\",\"response\":"
                    "{\"reason\":\"unmatched topic\"}}]");
    /* A push with no join_ref is the topic's (v1 clients). */
    ws_text(ws, "[null,\"9\",\"room\",\"echo\",{\"v\":1}]");
    expect_text(ws, "[null,\"9\",\"room\",\"phx_reply\",{\"status\":\"ok\","
                    "\"response\":{\"v\":1}}]");
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ---- bad frames -------------------------------------------------------------------------- */

/* A text frame that is not a Phoenix message and a binary frame that is
 * not a V2 binary push close with 1007, each with its reason, as the last
 * frame; the socket's channels go at once; counted by code. */
#define NOT_A_PUSH "\x03\xef" "invalid binary message: unknown kind (a client sends pushes, kind 0)"
static void test_bad_frames(void **st)
{
    (void)st;
    static const struct {
        int op;
        const char *msg;
        const char *close;
        size_t close_len;
    } cases[] = {
        {1, "[\"1\",\"2\",\"room\",\"x\"]", "\x03\xef" "invalid Phoenix message", 25},
        {1, "[\"1\",\"2\",\"room\",\"x\",{},\"extra\"]", NULL, 0}, /* 6 elements: fine */
        {2, "[\"1\",\"2\",\"room\",\"x\",{}]", NOT_A_PUSH, sizeof NOT_A_PUSH - 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cli *ws = ws_client();
        join(ws, "1", "room");
        ws_send(ws, cases[i].op, cases[i].msg, strlen(cases[i].msg));
        if (!cases[i].close) {
            heartbeat(ws, "3");
            cli_free(ws);
            continue;
        }
        expect_frame(ws, 8, cases[i].close, cases[i].close_len);
        assert_null(hd_topics_find(&srv.eng.topics, "room", 4));
        /* Nothing is delivered after the close frame. */
        assert_int_equal(hd_api_publish(&srv.api, "room", 4, "e", 1, "1", 1), 0);
        ws_text(ws, "[null,\"3\",\"phoenix\",\"heartbeat\",{}]");
        ws_send(ws, 8, "", 0);
        RUN_UNTIL(ws->eof);
        assert_int_equal(ws->in.len, 0); /* the heartbeat got no answer */
        cli_free(ws);
    }
    RUN_UNTIL(srv.net.nconns == 0);
    assert_int_equal(metric("herald_ws_closes_sent_total{code=\"1007\"}"), 2);
    assert_int_equal(metric("herald_ws_bad_messages_total"), 2);
}

/* ---- the client message rate ---------------------------------------------------------- */

/* limits.client_messages_per_s = 5, _burst = 10: a full bucket at the
 * upgrade; a refill of 1 token takes 200 ms. */
static int setup_rate(void **st)
{
    (void)st;
    return setup_with_script("listen = { host = '127.0.0.1', port = 0 }\n"
                             "limits = { client_messages_per_s = 5, client_messages_burst = 10 }\n"
                             "log = { level = 'error' }\n",
                             hooks);
}

/* The next frame is the reply to the message (jr as JSON, ref, topic):
 * its ok reply with response, or the "rate limited" error. Returns 1 for
 * the error. */
static int reply_or_limited(cli *ws, const char *jr, const char *ref, const char *topic,
                            const char *response)
{
    char ok[256], limited[256];
    snprintf(ok, sizeof ok, "[%s,\"%s\",\"%s\",\"phx_reply\",{\"status\":\"ok\",\"response\":%s}]",
             jr, ref, topic, response);
    snprintf(limited, sizeof limited,
             "[%s,\"%s\",\"%s\",\"phx_reply\",{\"status\":\"error\",\"response\":"
             "{\"reason\":\"rate limited\"}}]",
             jr, ref, topic);
    int op;
    char *got = next_frame(ws, &op);
    assert_int_equal(op, 1);
    int refused = strcmp(got, limited) == 0;
    if (!refused && strcmp(got, ok) != 0) fail_msg("got %s, wanted %s or %s", got, ok, limited);
    free(got);
    return refused;
}

/* n heartbeats with refs <prefix>1..<prefix>n in one write, then their
 * replies in order; returns how many were refused, after checking that the
 * first burst of them was not (a full bucket of 10). */
static int heartbeats(cli *ws, const char *prefix, int n)
{
    char m[128], ref[32];
    for (int i = 1; i <= n; i++) {
        snprintf(m, sizeof m, "[null,\"%s%d\",\"phoenix\",\"heartbeat\",{}]", prefix, i);
        ws_text(ws, m);
    }
    int refused = 0;
    for (int i = 1; i <= n; i++) {
        snprintf(ref, sizeof ref, "%s%d", prefix, i);
        int r = reply_or_limited(ws, "null", ref, "phoenix", "{}");
        if (i <= 10) assert_int_equal(r, 0);
        refused += r;
    }
    return refused;
}

/* Lets the loop run for ms: the bucket refills with loop time, which the
 * server and this test share. */
static void run_for(uint64_t ms)
{
    uint64_t end = uv_now(&loop) + ms;
    RUN_UNTIL(uv_now(&loop) >= end);
}

/* 30 messages at once: the burst (10) is processed, the rest (all but what
 * a refill in the meantime allows) get the error reply with their own
 * join_ref, ref and topic, whatever they are (a join, heartbeats, pushes),
 * counted in herald_client_messages_limited_total; none reaches the
 * message hook and one without a ref gets no reply. Once tokens are back,
 * messages are processed again. */
static void test_rate_limited(void **st)
{
    (void)st;
    cli *ws = ws_client();
    char m[128], ref[16];
    ws_text(ws, "[\"1\",\"1\",\"room\",\"phx_join\",{}]");
    for (int i = 2; i <= 30; i++) {
        if (i % 2) snprintf(m, sizeof m, "[null,\"%d\",\"phoenix\",\"heartbeat\",{}]", i);
        else snprintf(m, sizeof m, "[\"1\",\"%d\",\"room\",\"count\",{}]", i);
        ws_text(ws, m);
    }
    ws_text(ws, "[\"1\",null,\"room\",\"count\",{}]"); /* no ref: no reply either way */
    ws_text(ws, "[\"2\",\"31\",\"lobby\",\"phx_join\",{}]");
    assert_int_equal(reply_or_limited(ws, "\"1\"", "1", "room", "{}"), 0);
    int refused = 0, counted = 0;
    for (int i = 2; i <= 30; i++) {
        snprintf(ref, sizeof ref, "%d", i);
        char response[32];
        snprintf(response, sizeof response, "{\"n\":%d}", counted + 1);
        int r = i % 2 ? reply_or_limited(ws, "null", ref, "phoenix", "{}")
                      : reply_or_limited(ws, "\"1\"", ref, "room", response);
        if (i <= 10) assert_int_equal(r, 0);
        if (!r && !(i % 2)) counted++;
        refused += r;
    }
    /* The ref-less push, if a refill let it through, is answered (ref null)
     * before the join of lobby. */
    int op;
    char *got = next_frame(ws, &op);
    char nul_ok[96];
    snprintf(nul_ok, sizeof nul_ok,
             "[\"1\",null,\"room\",\"phx_reply\",{\"status\":\"ok\",\"response\":{\"n\":%d}}]",
             counted + 1);
    int nul_refused = strcmp(got, nul_ok) != 0;
    if (!nul_refused) {
        counted++;
        free(got);
        got = next_frame(ws, &op);
    }
    const char lobby_limited[] = "[\"2\",\"31\",\"lobby\",\"phx_reply\",{\"status\":\"error\","
                                 "\"response\":{\"reason\":\"rate limited\"}}]";
    const char lobby_ok[] = "[\"2\",\"31\",\"lobby\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]";
    int lobby_refused = strcmp(got, lobby_limited) == 0;
    if (!lobby_refused && strcmp(got, lobby_ok) != 0) fail_msg("got %s for the join of lobby", got);
    free(got);
    refused += nul_refused + lobby_refused;
    assert_true(refused >= 15);
    assert_int_equal(srv.st.client_msgs_limited, refused);
    assert_int_equal(srv.st.ws_msgs_in, 32); /* refused ones were received all the same */
    /* A refused join joined nothing. */
    if (lobby_refused) assert_null(hd_topics_find(&srv.eng.topics, "lobby", 5));
    /* 600 ms refill 3 tokens: a heartbeat and a push are processed, and
     * the hook has seen only the pushes that were not refused. */
    run_for(600);
    heartbeat(ws, "h");
    ws_text(ws, "[\"1\",\"c\",\"room\",\"count\",{}]");
    snprintf(m, sizeof m, "{\"n\":%d}", counted + 1);
    assert_int_equal(reply_or_limited(ws, "\"1\"", "c", "room", m), 0);
    assert_int_equal(metric("herald_client_messages_limited_total"), refused);
    assert_int_equal(metric("herald_client_rate_closes_total"), 0);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* A client that keeps sending into an empty bucket is closed with 1008
 * once refusals have gone on for 5 s; meanwhile another that burst (30 at
 * once) and then stopped is not, nor when it bursts again after the 5 s:
 * its first refusals were long over. */
static void test_rate_flood_closes(void **st)
{
    (void)st;
    cli *flood = ws_client(), *burst = ws_client();
    assert_true(heartbeats(burst, "a", 30) >= 15);
    /* A heartbeat a loop turn (the ticker's 5 ms: 200/s against 5/s),
     * until the close frame; at most 10 s. */
    uint64_t end = uv_now(&loop) + 10000;
    char *close = NULL;
    size_t close_len = 0;
    for (int i = 0; !close; i++) {
        if (uv_now(&loop) > end) fail_msg("the flood was not closed");
        char m[64];
        snprintf(m, sizeof m, "[null,\"f%d\",\"phoenix\",\"heartbeat\",{}]", i);
        ws_text(flood, m);
        uv_run(&loop, UV_RUN_ONCE);
        int op;
        size_t pl, pn;
        while (!close && frame_len(flood, &op, &pl, &pn) > 0) {
            char *f = next_frame_n(flood, &op, &close_len);
            if (op == 8) close = f;
            else free(f);
        }
    }
    assert_int_equal(close_len, 2 + strlen("message rate exceeded"));
    assert_int_equal((uint8_t)close[0] << 8 | (uint8_t)close[1], 1008);
    assert_memory_equal(close + 2, "message rate exceeded", close_len - 2);
    free(close);
    RUN_UNTIL(flood->eof);
    cli_free(flood);
    assert_int_equal(srv.st.client_rate_closes, 1);
    assert_int_equal(metric("herald_client_rate_closes_total"), 1);
    assert_int_equal(metric("herald_ws_closes_sent_total{code=\"1008\"}"), 1);
    /* The bursting client: a full bucket again, refusals again, open. */
    assert_true(heartbeats(burst, "b", 30) >= 15);
    run_for(400);
    heartbeat(burst, "c");
    assert_int_equal(srv.st.client_rate_closes, 1);
    cli_free(burst);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* limits.client_messages_per_s = 0: no limit. */
static int setup_rate_off(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "limits = { client_messages_per_s = 0, client_messages_burst = 0 }\n"
                      "log = { level = 'warn' }\n");
}

static void test_rate_off(void **st)
{
    (void)st;
    cli *ws = ws_client();
    assert_int_equal(heartbeats(ws, "", 300), 0);
    assert_int_equal(srv.st.client_msgs_limited, 0);
    cli_free(ws);
    RUN_UNTIL(srv.net.nconns == 0);
}

/* ws.allowed_origins: a browser's Origin must be allowed (an exact origin
 * or a subdomain pattern); a request without Origin is not a browser's and
 * passes; a refusal is 403 before the upgrade, counted. */
static int setup_origins(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "log = { level = 'warn' }\n"
                      "ws = { allowed_origins = { 'https://App.Example.com', '*.example.org' } }\n");
}

static void test_allowed_origins(void **st)
{
    (void)st;
    cli_free(ws_open("vsn=2.0.0", "Origin: https://app.example.com\r\n", NULL));
    cli_free(ws_open("vsn=2.0.0", "Origin: http://chat.example.org:8080\r\n", NULL));
    cli_free(ws_open("vsn=2.0.0", NULL, NULL)); /* no Origin: not a browser */
    static const char *const refused[] = {"https://evil.example.net", "https://example.org",
                                          "http://app.example.com", "null"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        cli *c = cli_new();
        char req[512];
        snprintf(req, sizeof req,
                 "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\nOrigin: %s\r\n\r\n",
                 refused[i]);
        cli_sends(c, req);
        expect_response(c, 403, "Forbidden", "close", "", "{\"error\":\"origin not allowed\"}");
        RUN_UNTIL(c->eof);
        cli_free(c);
    }
    assert_int_equal(srv.st.ws_bad_origin, 4);
    assert_int_equal(srv.st.ws_rejected, 4);
    assert_int_equal(metric("herald_ws_bad_origin_total"), 4);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handshake_refusals, setup_hooks, teardown),
        cmocka_unit_test_setup_teardown(test_subprotocols_and_token, setup_hooks, teardown),
        cmocka_unit_test_setup_teardown(test_identity_and_assigns, setup_hooks_many, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_identity, setup_hooks_many, teardown),
        cmocka_unit_test_setup_teardown(test_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_longest_topic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nul_escape_in_payload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_without_hook, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_with_hook, setup_hooks_many, teardown),
        cmocka_unit_test_setup_teardown(test_bad_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allowed_origins, setup_origins, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limited, setup_rate, teardown),
        cmocka_unit_test_setup_teardown(test_rate_flood_closes, setup_rate, teardown),
        cmocka_unit_test_setup_teardown(test_rate_off, setup_rate_off, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
