/* tests/unit/test_hooks.c: the hook runner (core/hooks.c) against a real
 * server with operator scripts loaded: how the results of several scripts
 * defining one hook combine, what a failing hook logs (the error, then the
 * traceback naming file:line of each frame, on one log line), and that the
 * budget stops a runaway loop, also one inside pcall, every time. Hooks are
 * called directly, with a real WebSocket connection of the server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "buf.h"
#include "config.h"
#include "err.h"
#include "hooks.h"
#include "log.h"
#include "script.h"
#include "server.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static char dir[] = "/tmp/herald-test-hooks-XXXXXX";
static char path_a[64], path_b[64];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Starts the server with script a (and b, unless NULL), in that order. */
static void start(const char *a, const char *b, int budget_ms)
{
    write_file(path_a, a);
    if (b) write_file(path_b, b);
    char conf[1024];
    snprintf(conf, sizeof conf, "%sscripts = { '%s'%s%s%s, budget_ms = %d }\n", base_config,
             path_a, b ? ", '" : "", b ? path_b : "", b ? "'" : "", budget_ms);
    setup_with(conf);
}

/* The server's side of a new WebSocket client. */
static hd_conn *server_conn(cli **client)
{
    *client = ws_client();
    hd_conn *c = srv.net.conns;
    assert_non_null(c);
    assert_null(c->next);
    assert_int_equal(c->kind, HD_CONN_WS);
    return c;
}

/* Log lines go to memory between capture() and captured(). */
static FILE *real_stderr, *mem;
static char *logbuf;
static size_t loglen;

static void capture(void)
{
    mem = open_memstream(&logbuf, &loglen);
    assert_non_null(mem);
    stderr = mem;
}

/* The log since capture() (caller frees). */
static char *captured(void)
{
    fflush(stderr);
    stderr = real_stderr;
    fclose(mem);
    char *r = logbuf;
    logbuf = NULL;
    return r;
}

/* After a test: a failed assertion may have left the log in memory; it
 * goes to the real stderr then, with the failure. */
static int teardown_hooks(void **st)
{
    if (stderr != real_stderr) {
        char *log = captured();
        fputs(log ? log : "", stderr);
        free(log);
    }
    return teardown(st);
}

static size_t count_of(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what)) n++;
    return n;
}

/* hd_hook_join with a fresh reply and meta; returns the verdict. */
static int join_hook(hd_conn *c, const char *topic, char *reply, char *meta, char *reason)
{
    hd_str r = HD_STR_INIT, m = HD_STR_INIT;
    reason[0] = 0;
    int ok = hd_hook_join(&srv.sc, c, topic, strlen(topic), NULL, &r, &m, reason, 128);
    snprintf(reply, 128, "%s", r.p ? r.p : "");
    snprintf(meta, 128, "%s", m.p ? m.p : "");
    hd_str_free(&r);
    hd_str_free(&m);
    return ok;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* join: the first refusal wins and the later scripts are not called; a
 * bare return is no opinion; replies and meta come from whichever hook
 * gave them; a hook that closes the socket denies with "closed". */
static void test_join_first_refusal_wins(void **st)
{
    (void)st;
    start("return { join = function(socket, topic)\n"
          "  if topic == 'deny' then return false, 'a says no' end\n"
          "  if topic == 'quiet' then return end\n"
          "  if topic == 'bye' then herald.disconnect(socket.id) return true end\n"
          "  return true, { reply = { from = 'a' } }\n"
          "end }\n",
          "return { join = function(socket, topic)\n"
          "  herald.log('warn', 'b.join ' .. topic)\n"
          "  if topic == 'b-deny' then return nil, 'b says no' end\n"
          "  return true, { meta = { who = 'b' } }\n"
          "end }\n",
          1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    assert_int_equal(hd_conn_set_identity(c, "user:1"), 0);
    char reply[128], meta[128], reason[128];
    const uint64_t *calls = &srv.sc.ss.calls[HD_HOOK_JOIN];

    capture();
    assert_int_equal(join_hook(c, "deny", reply, meta, reason), 0);
    char *log = captured();
    assert_string_equal(reason, "a says no");
    assert_int_equal(*calls, 1); /* b was not called */
    assert_null(strstr(log ? log : "", "b.join"));
    free(log);

    capture();
    assert_int_equal(join_hook(c, "room", reply, meta, reason), 1);
    log = captured();
    assert_string_equal(reply, "{\"from\":\"a\"}");
    assert_string_equal(meta, "{\"who\":\"b\"}");
    assert_int_equal(*calls, 3);
    char lua_line[64]; /* (a hook's log line names its connection) */
    snprintf(lua_line, sizeof lua_line, "[warn] conn %llu: [lua] ", (unsigned long long)c->id);
    assert_int_equal(count_of(log, lua_line), 1);
    assert_non_null(strstr(log, ":2: b.join room\n"));
    free(log);

    assert_int_equal(join_hook(c, "quiet", reply, meta, reason), 1);
    assert_string_equal(reply, "{}"); /* nobody gave a reply: the default */
    assert_int_equal(join_hook(c, "b-deny", reply, meta, reason), 0);
    assert_string_equal(reason, "b says no");
    assert_int_equal(*calls, 7);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_JOIN], 0);

    /* a closes the socket: the join fails whatever a returned, b never runs. */
    assert_int_equal(join_hook(c, "bye", reply, meta, reason), 0);
    assert_string_equal(reason, "closed");
    assert_int_equal(*calls, 8);
    expect_frame(client, 8, "\x03\xe9" "disconnected", 14); /* 1001 */
    cli_free(client);
}

/* publish: each hook gets the message the one before returned (or
 * changed); false drops it and ends the run; a failure delivers the
 * message as it came in. */
static void test_publish_hooks_chain(void **st)
{
    (void)st;
    start("return { publish = function(msg)\n"
          "  if msg.event == 'drop' then return false end\n"
          "  msg.data.trail = (msg.data.trail or '') .. 'a'\n"
          "  if msg.event == 'two' then return msg, 'and more' end\n"
          "  if msg.event == 'keep' then return end\n"
          "  return msg\n"
          "end }\n",
          "return { publish = function(msg)\n"
          "  if msg.event == 'boom' then error('b failed') end\n"
          "  return { event = msg.event .. '!', data = { trail = msg.data.trail .. 'b' } }\n"
          "end }\n",
          1000);
    static const struct {
        const char *event, *data;
        int deliver;
        const char *want_event, *want_data;
    } cases[] = {
        {"e", "{\"x\":1}", 1, "e!", "{\"trail\":\"ab\"}"},
        {"keep", "{}", 1, "keep!", "{\"trail\":\"ab\"}"}, /* changed in place, no return */
        {"two", "{}", 1, "two!", "{\"trail\":\"ab\"}"},   /* the first result is the message */
        {"drop", "{\"x\":1}", 0, "drop", "{\"x\":1}"},
        {"boom", "{\"x\":1}", 1, "boom", "{\"x\":1}"},    /* unchanged, though a changed it */
    };
    capture();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *ev = strdup(cases[i].event), *data = strdup(cases[i].data);
        assert_int_equal(hd_hook_publish(&srv.sc, "room:1", 6, &ev, &data), cases[i].deliver);
        assert_string_equal(ev, cases[i].want_event);
        assert_string_equal(data, cases[i].want_data);
        free(ev);
        free(data);
    }
    char *log = captured();
    /* 4 + 4 calls, minus b for drop and b's failure. */
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_PUBLISH], 8);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_PUBLISH], 1);
    assert_int_equal(srv.sc.ss.publish_dropped, 1);
    assert_int_equal(count_of(log, "[error]"), 1);
    assert_non_null(strstr(log, "b.lua:2: b failed"));
    free(log);
}

/* topic: every hook runs and the results merge in load order; a table
 * with one bad field counts for nothing; a failing hook leaves what the
 * others gave. */
static void test_topic_results_merge(void **st)
{
    (void)st;
    start("return { topic = function(name) return { tracked = false, throttle_ms = 50 } end }\n",
          "return { topic = function(name)\n"
          "  if name == 'bad' then return { debounce_ms = 5, presence = 'yes' } end\n"
          "  if name == 'err' then error('no policy for ' .. name) end\n"
          "  if name == 'none' then return nil end\n"
          "  return { throttle_ms = 100, coalesce = 'latest' }\n"
          "end }\n",
          1000);
    hd_topic_policy def, p;
    hd_topic_policy_default(&def);

    p = def;
    hd_hook_topic(&srv.sc, "room", 4, &p);
    assert_int_equal(p.tracked, 0);
    assert_int_equal(p.throttle_ms, 100);
    assert_int_equal(p.coalesce, HD_COALESCE_LATEST);
    assert_int_equal(p.debounce_ms, def.debounce_ms);
    assert_int_equal(p.presence, def.presence);

    capture();
    for (int i = 0; i < 3; i++) {
        static const char *const names[] = {"bad", "err", "none"};
        p = def;
        hd_hook_topic(&srv.sc, names[i], strlen(names[i]), &p);
        assert_int_equal(p.tracked, 0); /* a's result */
        assert_int_equal(p.throttle_ms, 50);
        assert_int_equal(p.debounce_ms, def.debounce_ms);
        assert_int_equal(p.presence, def.presence);
        assert_int_equal(p.coalesce, def.coalesce);
    }
    char *log = captured();
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_TOPIC], 2);
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_TOPIC], 7); /* b's failure is not a call */
    assert_non_null(strstr(log, "b.lua): presence: expected true or false, got \"yes\"\n"));
    assert_non_null(strstr(log, "b.lua:3: no policy for err"));
    free(log);
}

/* The config's error for one rule field: what follows "topics[1]: " in
 * the error of a config with the rule { match = 'x', <field> = <value> }
 * (caller frees). */
static char *rule_error(const char *field, const char *value)
{
    char conf[256], err[1024];
    snprintf(conf, sizeof conf, "topics = { { match = 'x', %s = %s } }\n", field, value);
    write_file(path_b, conf);
    hd_config c;
    assert_int_equal(hd_config_load(&c, path_b, err, sizeof err), HD_ECONFIG);
    char *at = strstr(err, ": topics[1]: ");
    if (!at) fail_msg("config %s: unexpected error %s", conf, err);
    assert_null(strchr(at, '\n')); /* one error */
    return strdup(at + strlen(": topics[1]: "));
}

/* topic: the result is checked by the config's schema (config.lua's
 * topic_policy), so each bad field, and an unknown one, is refused in the
 * words the config uses for a rule holding the same value, and voids the
 * whole result (one hook error each); a good result sets every field. */
static void test_topic_checked_as_config(void **st)
{
    (void)st;
    static const char *const cases[][2] = {
        {"tracked", "1"},          {"presence", "'yes'"},       {"throttle_ms", "-1"},
        {"debounce_ms", "1.5"},    {"max_wait_ms", "2^32"},     {"max_queue_bytes", "'5'"},
        {"coalesce", "'oldest'"},  {"on_overflow", "true"},     {"history_size", "100001"},
        {"history_ttl_ms", "0"},   {"recover_max", "{}"},       {"trackd", "true"},
    };
    enum { N = sizeof cases / sizeof *cases };
    char script[2048] = "local cases = {\n";
    for (int i = 0; i < N; i++) {
        size_t len = strlen(script);
        snprintf(script + len, sizeof script - len, "  c%d = { tracked = false, %s = %s },\n", i,
                 cases[i][0], cases[i][1]);
    }
    size_t len = strlen(script);
    snprintf(script + len, sizeof script - len, "%s",
             "  good = { tracked = false, presence = true, throttle_ms = 10, debounce_ms = 20,\n"
             "           max_wait_ms = 30, max_queue_bytes = 4096, coalesce = 'latest',\n"
             "           on_overflow = 'drop_oldest', history_size = 100000, history_ttl_ms = 1,\n"
             "           recover_max = 7 },\n"
             "}\n"
             "return { topic = function(name) return cases[name] end }\n");
    start(script, NULL, 1000);
    hd_topic_policy def, p;
    hd_topic_policy_default(&def);
    for (int i = 0; i < N; i++) {
        char *want = rule_error(cases[i][0], cases[i][1]);
        char name[16], line[512];
        snprintf(name, sizeof name, "c%d", i);
        p = def;
        capture();
        hd_hook_topic(&srv.sc, name, strlen(name), &p);
        char *log = captured();
        assert_memory_equal(&p, &def, sizeof p); /* tracked = false too: all or nothing */
        snprintf(line, sizeof line, "topic hook (%s): %s\n", path_a, want);
        if (!strstr(log, line))
            fail_msg("%s = %s: the log\n%s\nlacks\n%s", cases[i][0], cases[i][1], log, line);
        assert_int_equal(count_of(log, "\n"), 1);
        assert_int_equal(srv.sc.ss.errors[HD_HOOK_TOPIC], (uint64_t)i + 1);
        free(log);
        free(want);
    }
    p = def;
    hd_hook_topic(&srv.sc, "good", 4, &p);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_TOPIC], N);
    hd_topic_policy want = def; /* every field set; rule untouched */
    want.tracked = 0, want.presence = 1, want.throttle_ms = 10, want.debounce_ms = 20;
    want.max_wait_ms = 30, want.max_queue_bytes = 4096, want.coalesce = HD_COALESCE_LATEST;
    want.on_overflow = HD_OVERFLOW_DROP_OLDEST, want.history_size = 100000;
    want.history_ttl_ms = 1, want.recover_max = 7;
    assert_memory_equal(&p, &want, sizeof p);
    p = def;
    hd_hook_topic(&srv.sc, "none", 4, &p); /* nil: no opinion, no error */
    assert_memory_equal(&p, &def, sizeof p);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_TOPIC], N);
}

/* plugins = { ... } as a list: the plugins are loaded, so their hooks run,
 * in list order. rate_limit (1 join a second) has no opinion on a first
 * join and refuses the second; topic_acl (no rules, default deny) refuses
 * every join. Listed first, rate_limit counts both joins and refuses the
 * second; listed second, it never runs. */
static void plugin_order(const char *plugins, const char *first, const char *second_reason)
{
    char conf[1024];
    snprintf(conf, sizeof conf, "%splugins = %s\n", base_config, plugins);
    setup_with(conf);
    hd_script *s = srv.sc.cur;
    assert_int_equal(hd_script__nhooks(s, HD_HOOK_JOIN), 2);
    lua_State *L = hd_script__state(s);
    hd_script__push_hook(s, L, HD_HOOK_JOIN, 1);
    assert_string_equal(lua_tostring(L, -2), first);
    lua_pop(L, 2);
    cli *client;
    hd_conn *c = server_conn(&client);
    char reply[128], meta[128], reason[128];
    assert_int_equal(join_hook(c, "room", reply, meta, reason), 0);
    assert_string_equal(reason, "unauthorized");
    assert_int_equal(join_hook(c, "room", reply, meta, reason), 0);
    assert_string_equal(reason, second_reason);
    cli_free(client);
}

static void test_plugins_run_in_list_order(void **st)
{
    plugin_order("{ { 'rate_limit', joins_per_second = 1 }, { 'topic_acl', rules = {} } }",
                 "plugins/rate_limit.lua", "rate limited");
    teardown(st);
    plugin_order("{ { 'topic_acl', rules = {} }, { 'rate_limit', joins_per_second = 1 } }",
                 "plugins/topic_acl.lua", "unauthorized");
}

/* authenticate merges (the first id, every assigns); api_auth's first
 * refusal wins and no opinion from all is -1; message's first answer
 * wins; shutdown runs every hook. */
static void test_other_hooks(void **st)
{
    (void)st;
    start("return {\n"
          "  authenticate = function(req)\n"
          "    if req.params.user == 'x' then return nil, 'no x' end\n"
          "    return { id = 'a', assigns = { x = 1, who = 'a' } }\n"
          "  end,\n"
          "  api_auth = function(req) if req.path == '/a' then return false end end,\n"
          "  message = function(socket, topic, event)\n"
          "    if event == 'a' then return { by = 'a' } end\n"
          "  end,\n"
          "  shutdown = function(phase) herald.log('warn', 'a ' .. phase) end,\n"
          "}\n",
          "return {\n"
          "  authenticate = function(req)\n"
          "    return { id = 'b', assigns = { y = 2, who = 'b' } }\n"
          "  end,\n"
          "  api_auth = function(req) if req.path == '/b' then return true end end,\n"
          "  message = function(socket, topic, event)\n"
          "    if event == 'b' then return nil, 'b refuses' end\n"
          "    if event == 'a' then error('never called') end\n"
          "  end,\n"
          "  shutdown = function(phase) herald.log('warn', 'b ' .. phase) end,\n"
          "}\n",
          1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    hd_hook_req r;
    memset(&r, 0, sizeof r);
    r.method = "GET";
    r.path = "/a";
    r.path_len = 2;
    r.query = "user=7";
    r.query_len = 6;
    r.hbuf = "";
    char reason[128], *id, *assigns;
    /* The upgrade ran authenticate already: both scripts' hooks. */
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_AUTHENTICATE], 2);
    assert_string_equal(hd_conn_identity(c), "a");
    assert_int_equal(hd_hook_authenticate(&srv.sc, c, &r, NULL, &id, &assigns, reason, 128), 1);
    assert_string_equal(id, "a");
    json_t *js = json_loads(assigns, 0, NULL); /* key order is the Lua table's */
    assert_non_null(js);
    assert_int_equal(json_object_size(js), 3);
    assert_string_equal(json_string_value(json_object_get(js, "who")), "b"); /* later wins */
    assert_int_equal(json_integer_value(json_object_get(js, "x")), 1);
    assert_int_equal(json_integer_value(json_object_get(js, "y")), 2);
    json_decref(js);
    free(id);
    free(assigns);
    r.query = "user=x";
    assert_int_equal(hd_hook_authenticate(&srv.sc, c, &r, NULL, &id, &assigns, reason, 128), 0);
    assert_string_equal(reason, "no x");
    assert_null(id);
    assert_null(assigns);
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_AUTHENTICATE], 5);

    assert_int_equal(hd_hook_api_auth(&srv.sc, c, &r), 0);
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_API_AUTH], 1);
    r.path = "/b";
    assert_int_equal(hd_hook_api_auth(&srv.sc, c, &r), 1);
    r.path = "/c";
    assert_int_equal(hd_hook_api_auth(&srv.sc, c, &r), -1);

    json_t *payload = json_object();
    hd_str reply = HD_STR_INIT;
    assert_int_equal(hd_hook_message(&srv.sc, c, "t", 1, "a", payload, &reply, reason, 128), 1);
    assert_string_equal(reply.p, "{\"by\":\"a\"}");
    assert_int_equal(hd_hook_message(&srv.sc, c, "t", 1, "b", payload, &reply, reason, 128), 2);
    assert_string_equal(reason, "b refuses");
    assert_int_equal(hd_hook_message(&srv.sc, c, "t", 1, "c", payload, &reply, reason, 128), 0);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_MESSAGE], 0);
    hd_str_free(&reply);
    json_decref(payload);

    capture();
    hd_hook_shutdown(&srv.sc, "drain");
    char *log = captured();
    const char *a = strstr(log, "a drain\n"), *b = strstr(log, "b drain\n");
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
    free(log);
    cli_free(client);
}

/* A failing hook logs one line: the error as the error text is kept for
 * reload and the API, then the traceback with file:line of every frame. */
static void test_error_traceback(void **st)
{
    (void)st;
    start("local function helper(x)\n"
          "  error('boom ' .. x)\n"
          "end\n"
          "local function middle(x)\n"
          "  helper(x)\n"
          "end\n"
          "return { join = function(socket, topic)\n"
          "  middle(topic)\n"
          "end }\n",
          NULL, 1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    char reply[128], meta[128], reason[128];
    capture();
    assert_int_equal(join_hook(c, "room", reply, meta, reason), 0);
    char *log = captured();
    assert_string_equal(reason, "join crashed");
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_JOIN], 1);
    assert_int_equal(count_of(log, "\n"), 1); /* one line */
    char want[1024];
    snprintf(want, sizeof want,
             "[error] conn %llu: join hook (%s) failed: %s:2: boom room; stack traceback: "
             "[C]: in function 'error' | %s:2: in function 'helper' | "
             "%s:5: in function 'middle' | %s:8: in function <%s:7>\n",
             (unsigned long long)c->id, path_a, path_a, path_a, path_a, path_a, path_a);
    assert_non_null(strstr(log, " [error] "));
    assert_string_equal(strstr(log, "[error]"), want);
    free(log);
    cli_free(client);

    /* A reload whose script fails: the error comes back without the
     * traceback; the log has it. */
    write_file(path_a, "local t = {}\nt.x.y = 1\nreturn {}\n");
    char err[512];
    capture();
    assert_int_equal(hd_script_reload(&srv.sc, err, sizeof err), HD_ECONFIG);
    log = captured();
    char short_msg[512];
    snprintf(short_msg, sizeof short_msg, "%s:2: attempt to index field 'x' (a nil value)", path_a);
    assert_string_equal(err, short_msg);
    assert_string_equal(srv.sc.ss.last_error, short_msg);
    snprintf(want, sizeof want,
             "[error] loading (%s) failed: %s; stack traceback: %s:2: in main chunk\n", path_a,
             short_msg, path_a);
    assert_non_null(strstr(log, want));
    free(log);
}

/* The budget stops a runaway loop, also one inside pcall, and keeps doing
 * so: the count hook survives the errors it raises. */
static void test_budget_stops_loops(void **st)
{
    (void)st;
    start("return { join = function(socket, topic)\n"
          "  if topic == 'spin' then while true do end end\n"
          "  if topic == 'swallow' then pcall(function() while true do end end) end\n"
          "  return true\n"
          "end }\n",
          NULL, 20);
    cli *client;
    hd_conn *c = server_conn(&client);
    char reply[128], meta[128], reason[128];
    static const char *const topics[] = {"spin", "swallow", "room", "spin"};
    static const int want[] = {0, 0, 1, 0};
    capture();
    for (int i = 0; i < 4; i++) {
        assert_int_equal(join_hook(c, topics[i], reply, meta, reason), want[i]);
        if (!want[i]) assert_string_equal(reason, "join crashed");
    }
    char *log = captured();
    assert_int_equal(srv.sc.ss.budget_exceeded, 3);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_JOIN], 3);
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_JOIN], 1);
    assert_int_equal(count_of(log, "\n"), 3);
    char want_spin[1024], want_swallow[1024];
    unsigned long long id = c->id;
    snprintf(want_spin, sizeof want_spin,
             "[error] conn %llu: join hook (%s) failed: %s:2: join hook exceeded its budget of 20 "
             "ms; stack traceback: %s:2: in function <%s:1>\n",
             id, path_a, path_a, path_a, path_a);
    snprintf(want_swallow, sizeof want_swallow,
             "[error] conn %llu: join hook (%s) failed: %s:3: join hook exceeded its budget of 20 ms; "
             "stack traceback: %s:3: in function <%s:3> | [C]: in function 'pcall' | "
             "[herald sandbox]:9: in function 'pcall' | %s:3: in function <%s:1>\n",
             id, path_a, path_a, path_a, path_a, path_a, path_a);
    assert_int_equal(count_of(log, want_spin), 2);
    assert_int_equal(count_of(log, want_swallow), 1);
    free(log);
    cli_free(client);
}

/* The sandbox's pcall and xpcall behave as the VM's: pcall() with no
 * argument and xpcall without a handler raise; xpcall passes its extra
 * arguments on. */
static void test_sandbox_calls(void **st)
{
    (void)st;
    start("return { join = function(socket, topic)\n"
          "  local _, e1 = pcall(pcall)\n"
          "  local _, e2 = pcall(xpcall, function() end)\n"
          "  local ok, sum = xpcall(function(a, b) return a + b end, tostring, 1, 2)\n"
          "  local _, e3 = pcall(nil)\n"
          "  return true, { reply = { e1 = e1, e2 = e2, ok = ok, sum = sum, e3 = e3 } }\n"
          "end }\n",
          NULL, 1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    hd_str r = HD_STR_INIT, m = HD_STR_INIT;
    char reason[128] = "";
    assert_int_equal(hd_hook_join(&srv.sc, c, "t", 1, NULL, &r, &m, reason, 128), 1);
    assert_non_null(r.p);
    assert_non_null(strstr(r.p, "\"e1\":\"bad argument #1 to 'pcall' (value expected)\""));
    assert_non_null(strstr(r.p, "\"e2\":\"bad argument #2 to 'xpcall' (function expected, got no value)\""));
    assert_non_null(strstr(r.p, "\"ok\":true"));
    assert_non_null(strstr(r.p, "\"sum\":3"));
    assert_non_null(strstr(r.p, "\"e3\":\"attempt to call a nil value\""));
    hd_str_free(&r);
    hd_str_free(&m);
    cli_free(client);
}

/* return nil is no opinion in every hook (only false, or nil with a
 * reason, refuses), and a returned table with a hostile metatable is read
 * raw: its __index neither raises outside the guarded call (a Lua panic:
 * the process aborted) nor runs unbudgeted. */
static void test_nil_and_metatables(void **st)
{
    (void)st;
    start("local evil = setmetatable({}, { __index = function() error('boom') end })\n"
          "local spin = setmetatable({}, { __index = function() while true do end end })\n"
          "return {\n"
          "  authenticate = function(req) return nil end,\n"
          "  api_auth = function(req) return nil end,\n"
          "  join = function(socket, topic)\n"
          "    if topic == 'nil' then return nil end\n"
          "    return true, evil\n"
          "  end,\n"
          "  publish = function(msg) return spin end,\n"
          "  topic = function(name) return evil end,\n"
          "}\n",
          NULL, 1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    char reply[128], meta[128], reason[128];
    assert_int_equal(join_hook(c, "nil", reply, meta, reason), 1); /* no opinion: allowed */
    assert_string_equal(reply, "{}");
    assert_int_equal(join_hook(c, "room", reply, meta, reason), 1); /* no reply, no meta */
    assert_string_equal(reply, "{}");
    assert_string_equal(meta, "");
    hd_hook_req r = {.method = "GET", .path = "/x", .path_len = 2, .hbuf = ""};
    assert_int_equal(hd_hook_api_auth(&srv.sc, c, &r), -1); /* no opinion: the token rule */
    char *id = NULL, *assigns = NULL;
    assert_int_equal(hd_hook_authenticate(&srv.sc, c, &r, NULL, &id, &assigns, reason, 128), 1);
    free(id);
    free(assigns);
    hd_topic_policy p;
    hd_topic_policy_default(&p);
    hd_hook_topic(&srv.sc, "t", 1, &p); /* every field raw-read as nil: the defaults */
    assert_int_equal(p.tracked, 1);
    char *ev = strdup("e"), *data = strdup("{}");
    assert_int_equal(hd_hook_publish(&srv.sc, "t", 1, &ev, &data), 1);
    assert_string_equal(ev, "e"); /* spin has no event: logged, sent as it came */
    free(ev);
    free(data);
    cli_free(client);
}

/* One rule for nil in every hook that can refuse: nothing, a bare nil
 * (and nil, nil) is no opinion (the next script decides: here b, which
 * always answers); false, or nil with a reason, refuses and b is not
 * asked. The mode is the join topic, the api_auth and authenticate path,
 * the message and publish event. */
static void test_one_rule_for_nil(void **st)
{
    (void)st;
    start("local function answer(mode)\n"
          "  if mode == 'nil' then return nil end\n"
          "  if mode == 'nilnil' then return nil, nil end\n"
          "  if mode == 'nilwhy' then return nil, 'why' end\n"
          "  if mode == 'false' then return false end\n"
          "  if mode == 'falsewhy' then return false, 'why' end\n"
          "end\n"
          "return {\n"
          "  authenticate = function(req) return answer(req.path) end,\n"
          "  join = function(socket, topic) return answer(topic) end,\n"
          "  api_auth = function(req) return answer(req.path) end,\n"
          "  message = function(socket, topic, event) return answer(event) end,\n"
          "  publish = function(msg) return answer(msg.event) end,\n"
          "}\n",
          "return {\n"
          "  authenticate = function(req) return { id = 'b' } end,\n"
          "  join = function(socket, topic) return true, { reply = { by = 'b' } } end,\n"
          "  api_auth = function(req) return true end,\n"
          "  message = function(socket, topic, event) return { by = 'b' } end,\n"
          "  publish = function(msg) msg.event = msg.event .. '!' return msg end,\n"
          "}\n",
          1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    static const struct {
        const char *mode;
        int refuses;
        const char *reason; /* of join and authenticate; message's is "refused" for none */
    } cases[] = {
        {"bare", 0, NULL},    {"nil", 0, NULL},         {"nilnil", 0, NULL},
        {"nilwhy", 1, "why"}, {"false", 1, NULL}, {"falsewhy", 1, "why"},
    };
    json_t *payload = json_object();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *mode = cases[i].mode, *why = cases[i].reason;
        int no = cases[i].refuses;
        char reply[128], meta[128], reason[128];
        assert_int_equal(join_hook(c, mode, reply, meta, reason), !no);
        if (no) assert_string_equal(reason, why ? why : "unauthorized");
        else assert_string_equal(reply, "{\"by\":\"b\"}");

        hd_hook_req r = {.method = "GET", .path = mode, .path_len = strlen(mode), .hbuf = ""};
        char *id = NULL, *assigns = NULL;
        assert_int_equal(hd_hook_authenticate(&srv.sc, c, &r, NULL, &id, &assigns, reason, 128),
                         !no);
        if (no) assert_string_equal(reason, why ? why : "unauthorized");
        else assert_string_equal(id, "b");
        free(id);
        free(assigns);

        assert_int_equal(hd_hook_api_auth(&srv.sc, c, &r), !no);

        hd_str rep = HD_STR_INIT;
        assert_int_equal(hd_hook_message(&srv.sc, c, "t", 1, mode, payload, &rep, reason, 128),
                         no ? 2 : 1);
        if (no) assert_string_equal(reason, why ? why : "refused");
        else assert_string_equal(rep.p, "{\"by\":\"b\"}");
        hd_str_free(&rep);

        char *ev = strdup(mode), *data = strdup("{}"), want[32];
        assert_int_equal(hd_hook_publish(&srv.sc, "t", 1, &ev, &data), !no);
        snprintf(want, sizeof want, "%s%s", mode, no ? "" : "!");
        assert_string_equal(ev, want);
        free(ev);
        free(data);
    }
    json_decref(payload);
    for (int h = 0; h < HD_HOOK_COUNT; h++) assert_int_equal(srv.sc.ss.errors[h], 0);
    cli_free(client);
}

/* The next text frame's event (its 4th element). */
static void expect_event(cli *client, const char *event)
{
    int op;
    char *f = next_frame(client, &op);
    assert_int_equal(op, 1);
    json_t *m = json_loads(f, 0, NULL);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_array_get(m, 3)), event);
    json_decref(m);
    free(f);
}

/* leave runs for each channel left (phx_leave, a duplicate join closing
 * the old channel, the socket closing: once per joined topic) and then
 * disconnect once, with the reason; their results are ignored, an error
 * in one is counted and the others still run; a hook that closes the
 * socket it is told about does not run them twice. */
static void test_leave_and_disconnect(void **st)
{
    (void)st;
    start("return {\n"
          "  leave = function(socket, topic)\n"
          "    herald.log('warn', 'leave ' .. topic .. ' of ' .. socket.conn_id)\n"
          "    if topic == 'err' then error('leave failed') end\n"
          "    return false, 'ignored'\n"
          "  end,\n"
          "  disconnect = function(socket, reason)\n"
          "    herald.log('warn', 'disconnect ' .. reason .. ' of ' .. socket.conn_id)\n"
          "  end,\n"
          "  message = function(socket, topic, event)\n"
          "    herald.disconnect(socket.id, 4000)\n"
          "    return true\n"
          "  end,\n"
          "}\n",
          "return { leave = function(socket, topic) herald.log('warn', 'b leave ' .. topic) end }\n",
          1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    char id[32], line[64];
    snprintf(id, sizeof id, " of %llu\n", (unsigned long long)c->id);
    const uint64_t *leaves = &srv.sc.ss.calls[HD_HOOK_LEAVE];
    const uint64_t *gone = &srv.sc.ss.calls[HD_HOOK_DISCONNECT];
    join(client, "1", "a");
    join(client, "2", "err");
    assert_int_equal(*leaves, 0);

    capture();
    ws_text(client, "[\"1\",\"3\",\"a\",\"phx_leave\",{}]");
    expect_event(client, "phx_reply");
    expect_event(client, "phx_close");
    ws_text(client, "[\"4\",\"4\",\"err\",\"phx_join\",{}]"); /* closes the old channel */
    expect_event(client, "phx_close");
    expect_event(client, "phx_reply");
    char *log = captured();
    snprintf(line, sizeof line, "leave a%s", id);
    const char *la = strstr(log, line), *lb = strstr(log, "b leave a\n");
    assert_non_null(la);
    assert_non_null(lb);
    assert_true(la < lb); /* load order */
    snprintf(line, sizeof line, "leave err%s", id);
    assert_non_null(strstr(log, line));
    assert_non_null(strstr(log, "b leave err\n")); /* after a's error */
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_LEAVE], 1);
    assert_int_equal(*gone, 0);
    free(log);

    /* The socket closes with channels joined: a leave for each, then disconnect. */
    join(client, "5", "z");
    capture();
    cli_free(client);
    RUN_UNTIL(*gone == 1);
    log = captured();
    char want[64];
    snprintf(want, sizeof want, "disconnect closed%s", id);
    const char *d = strstr(log, want), *lz = strstr(log, "b leave z\n"),
               *le = strstr(log, "b leave err\n");
    assert_non_null(d);
    assert_non_null(lz);
    assert_non_null(le);
    assert_true(lz < d && le < d);
    assert_int_equal(count_of(log, "disconnect "), 1);
    free(log);
    assert_int_equal(*leaves, 6); /* a, err, err, z by both, less a's two failures */
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_DISCONNECT], 0);

    /* herald.disconnect from a hook: the hooks run inside it, once, with its reason. */
    c = server_conn(&client);
    assert_int_equal(hd_conn_set_identity(c, "kicked"), 0);
    join(client, "1", "t");
    capture();
    ws_text(client, "[\"1\",\"2\",\"t\",\"kick\",{}]");
    int op;
    char *f = next_frame(client, &op);
    assert_int_equal(op, 8); /* closed: no reply */
    free(f);
    log = captured();
    assert_int_equal(count_of(log, "disconnect disconnected"), 1);
    assert_int_equal(count_of(log, "b leave t\n"), 1);
    free(log);
    assert_int_equal(*gone, 2);
    cli_free(client);
    RUN_UNTIL(srv.net.nws == 0);
    assert_int_equal(*gone, 2);

    /* At server stop (teardown), with a socket still joined: the hooks run
     * while the scripts are up, and never after. */
    c = server_conn(&client);
    join(client, "1", "t");
    (void)c;
}

/* A reload's recheck that refuses a joined channel closes it: leave runs
 * (in the new scripts), disconnect does not (the socket stays). */
static void test_leave_on_recheck(void **st)
{
    (void)st;
    write_file(path_a, "return { join = function() return true end }\n");
    char conf[1024];
    snprintf(conf, sizeof conf, "%sscripts = { '%s' }\nreload = { recheck_joins = true }\n",
             base_config, path_a);
    setup_with(conf);
    cli *client;
    server_conn(&client);
    join(client, "1", "keep");
    join(client, "2", "gone");
    write_file(path_a, "return {\n"
                       "  join = function(socket, topic) return topic ~= 'gone' end,\n"
                       "  leave = function(socket, topic) herald.log('warn', 'left ' .. topic) end,\n"
                       "  disconnect = function() herald.log('warn', 'disconnected') end,\n"
                       "}\n");
    char err[256];
    capture();
    assert_int_equal(hd_server_reload(&srv, err, sizeof err), 0);
    char *log = captured();
    assert_non_null(strstr(log, "left gone\n"));
    assert_int_equal(count_of(log, "left "), 1);
    assert_null(strstr(log, "disconnected"));
    free(log);
    expect_event(client, "phx_close");
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_LEAVE], 1);
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_DISCONNECT], 0);
    cli_free(client);
    RUN_UNTIL(srv.sc.ss.calls[HD_HOOK_DISCONNECT] == 1);
    assert_int_equal(srv.sc.ss.calls[HD_HOOK_LEAVE], 2); /* keep, at the close */
}

/* The value of key in c's assigns, as compact JSON ("" when absent; caller frees). */
static char *assign_of(hd_conn *c, const char *key)
{
    json_t *o = json_loads(c->assigns ? c->assigns : "{}", 0, NULL);
    assert_true(json_is_object(o));
    json_t *v = json_object_get(o, key);
    char *r = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("");
    json_decref(o);
    return r;
}

static void expect_assign(hd_conn *c, const char *key, const char *want)
{
    char *got = assign_of(c, key);
    assert_string_equal(got, want);
    free(got);
}

/* hd_hook_message's reply (or reason) for event. */
static int message_hook(hd_conn *c, const char *event, char *out)
{
    json_t *payload = json_object();
    hd_str reply = HD_STR_INIT;
    char reason[128] = "";
    int r = hd_hook_message(&srv.sc, c, "t", 1, event, payload, &reply, reason, 128);
    snprintf(out, 128, "%s", r == 1 ? reply.p : reason);
    hd_str_free(&reply);
    json_decref(payload);
    return r;
}

/* Assigns persist: what join or message hooks write in socket.assigns is
 * kept with the socket (and the next hook of the same run sees it), as is
 * what herald.assign sets, from a hook or a timer; a hook that does not
 * touch assigns, or only reads them, leaves the very bytes. */
static void test_assigns_persist(void **st)
{
    (void)st;
    start("return {\n"
          "  join = function(socket, topic)\n"
          "    if topic == 'set' then socket.assigns.x = 1; socket.assigns.role = nil end\n"
          "    if topic == 'read' then return socket.assigns.role == 'admin' end\n"
          "    return true\n"
          "  end,\n"
          "  message = function(socket, topic, event)\n"
          "    local a = socket.assigns\n"
          "    if event == 'see' then return { x = a.x, y = a.y, role = a.role, n = a.n } end\n"
          "    if event == 'assign' then herald.assign(socket, 'y', { z = 2 }) return true end\n"
          "    if event == 'unassign' then herald.assign(socket, 'x', nil) return { x = a.x } end\n"
          "    if event == 'chain' then a.w = 'a' return end\n"
          "    if event == 'bad' then socket.assigns = 5 return true end\n"
          "    if event == 'later' then\n"
          "      herald.after(1, function() herald.assign(socket, 'later', true) end)\n"
          "      return true\n"
          "    end\n"
          "  end,\n"
          "}\n",
          "return { message = function(socket, topic, event)\n"
          "  if event == 'chain' then return { w = socket.assigns.w } end\n"
          "end }\n",
          1000);
    cli *client;
    hd_conn *c = server_conn(&client);
    c->assigns = strdup("{\"role\":\"admin\",\"n\":1}"); /* as authenticate leaves them */
    const char *was = c->assigns;
    char reply[128], meta[128], reason[128], out[128];

    /* Not touched, or only read: the same bytes, not even re-encoded. */
    assert_int_equal(join_hook(c, "none", reply, meta, reason), 1);
    assert_ptr_equal(c->assigns, was);
    assert_int_equal(join_hook(c, "read", reply, meta, reason), 1);
    assert_ptr_equal(c->assigns, was);
    assert_string_equal(c->assigns, "{\"role\":\"admin\",\"n\":1}");
    assert_int_equal(message_hook(c, "other", out), 0);
    assert_ptr_equal(c->assigns, was);

    /* join writes, a later message hook sees it. */
    assert_int_equal(join_hook(c, "set", reply, meta, reason), 1);
    expect_assign(c, "x", "1");
    expect_assign(c, "role", "");
    expect_assign(c, "n", "1");
    assert_int_equal(message_hook(c, "see", out), 1);
    json_t *r = json_loads(out, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(r, "x")), 1);
    assert_null(json_object_get(r, "role"));
    json_decref(r);

    /* herald.assign from a message hook; a table value; nil removes. */
    assert_int_equal(message_hook(c, "assign", out), 1);
    expect_assign(c, "y", "{\"z\":2}");
    assert_int_equal(message_hook(c, "see", out), 1);
    assert_non_null(strstr(out, "\"y\":{\"z\":2}"));
    assert_int_equal(message_hook(c, "unassign", out), 1);
    assert_string_equal(out, "{}"); /* the hook's own table followed */
    expect_assign(c, "x", "");
    expect_assign(c, "y", "{\"z\":2}");

    /* Within one run: the next script's hook sees what the one before wrote. */
    assert_int_equal(message_hook(c, "chain", out), 1);
    assert_string_equal(out, "{\"w\":\"a\"}");
    expect_assign(c, "w", "\"a\"");

    /* Assigns that are not an object: logged, counted, the old ones kept. */
    was = c->assigns;
    capture();
    assert_int_equal(message_hook(c, "bad", out), 1);
    char *log = captured();
    assert_non_null(strstr(log, "message hook: socket.assigns cannot be kept: not a table"));
    free(log);
    assert_ptr_equal(c->assigns, was);
    assert_int_equal(srv.sc.ss.errors[HD_HOOK_MESSAGE], 1);

    /* herald.assign outside any hook, from a timer holding the socket. */
    assert_int_equal(message_hook(c, "later", out), 1);
    RUN_UNTIL(c->assigns && strstr(c->assigns, "\"later\":true"));
    expect_assign(c, "w", "\"a\"");
    cli_free(client);
}

int main(void)
{
    real_stderr = stderr;
    if (!mkdtemp(dir)) return 1;
    snprintf(path_a, sizeof path_a, "%s/a.lua", dir);
    snprintf(path_b, sizeof path_b, "%s/b.lua", dir);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_join_first_refusal_wins, teardown_hooks),
        cmocka_unit_test_teardown(test_publish_hooks_chain, teardown_hooks),
        cmocka_unit_test_teardown(test_topic_results_merge, teardown_hooks),
        cmocka_unit_test_teardown(test_topic_checked_as_config, teardown_hooks),
        cmocka_unit_test_teardown(test_plugins_run_in_list_order, teardown_hooks),
        cmocka_unit_test_teardown(test_other_hooks, teardown_hooks),
        cmocka_unit_test_teardown(test_error_traceback, teardown_hooks),
        cmocka_unit_test_teardown(test_budget_stops_loops, teardown_hooks),
        cmocka_unit_test_teardown(test_sandbox_calls, teardown_hooks),
        cmocka_unit_test_teardown(test_nil_and_metatables, teardown_hooks),
        cmocka_unit_test_teardown(test_one_rule_for_nil, teardown_hooks),
        cmocka_unit_test_teardown(test_leave_and_disconnect, teardown_hooks),
        cmocka_unit_test_teardown(test_leave_on_recheck, teardown_hooks),
        cmocka_unit_test_teardown(test_assigns_persist, teardown_hooks),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(path_a);
    unlink(path_b);
    rmdir(dir);
    return rc;
}
