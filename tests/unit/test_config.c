/* tests/unit/test_config.c: loading, defaults, errors naming file, line
 * and setting, the sandbox and its instruction budget, topic globs, the
 * cluster section and listen.reuseport. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "util.h"
#include "err.h"
#include "log.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char path[64];

static int load(const char *text, hd_config *c, char *err, size_t errlen)
{
    strcpy(path, "/tmp/herald-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    err[0] = 0;
    int rc = hd_config_load(c, path, err, errlen);
    unlink(path);
    return rc;
}

/* Loads text expecting HD_ECONFIG with an error containing each of the
 * NULL-terminated fragments ("$F" stands for the file name). */
static void bad(const char *text, ...)
{
    hd_config c;
    char err[1024];
    int rc = load(text, &c, err, sizeof err);
    if (rc != HD_ECONFIG) fail_msg("config %s: loaded (rc %d), expected an error", text, rc);
    va_list ap;
    va_start(ap, text);
    for (const char *want; (want = va_arg(ap, const char *));) {
        char w[256];
        if (strncmp(want, "$F", 2) == 0) snprintf(w, sizeof w, "%s%s", path, want + 2);
        else snprintf(w, sizeof w, "%s", want);
        if (!strstr(err, w)) fail_msg("config %s: error \"%s\" lacks \"%s\"", text, err, w);
    }
    va_end(ap);
    /* A failed load leaves nothing to free (and freeing is still safe). */
    assert_null(c.host);
    assert_null(c.ws_paths);
    hd_config_free(&c);
}

static void test_defaults(void **st)
{
    (void)st;
    hd_config c;
    char err[512];
    unsetenv("HERALD_PORT");
    assert_int_equal(hd_config_load(&c, NULL, err, sizeof err), 0);
    assert_string_equal(c.source, "(embedded default)");
    assert_int_equal(c.port, 4000);
    assert_string_equal(c.host, "0.0.0.0");
    assert_int_equal(c.nmounts, 2);
    assert_string_equal(c.ws_paths[0], "/push_socket/websocket");
    assert_string_equal(c.ws_paths[1], "/socket/websocket");
    /* limits, as lua/herald/config.lua defines them */
    assert_int_equal(c.max_connections, 100000);
    assert_int_equal(c.max_message_bytes, 65536);
    assert_int_equal(c.max_inbound_bytes, 64 << 20);
    assert_int_equal(c.send_queue_bytes, 1048576);
    assert_int_equal(c.max_header_bytes, 16384);
    assert_int_equal(c.max_url_bytes, 8192);
    assert_int_equal(c.max_body_bytes, 1048576);
    assert_int_equal(c.max_topics_per_socket, 100);
    assert_int_equal(c.max_queued_bytes, 268435456);
    assert_int_equal(c.client_messages_per_s, 100);
    assert_int_equal(c.client_messages_burst, 200);
    assert_int_equal(c.ws_idle_ms, 45000);
    assert_int_equal(c.http_idle_ms, 60000);
    assert_int_equal(c.http_head_ms, 10000);
    assert_int_equal(c.http_body_ms, 30000);
    assert_int_equal(c.ws_message_ms, 30000);
    assert_int_equal(c.ws_close_ms, 5000);
    assert_int_equal(c.log_level, HD_LOG_INFO);
    assert_int_equal(c.log_format, HD_LOG_TEXT);
    assert_int_equal(c.recheck_joins, 0);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_int_equal(c.drain_announce_ms, 0);
    assert_int_equal(c.drain_http_idle_ms, 500);
    assert_int_equal(c.drain_http_ms, 5000);
    assert_int_equal(c.drain_flush_ms, 5000);
    assert_int_equal(c.drain_disconnect_sockets, 1);
    assert_int_equal(c.drain_disconnect_rate, 5000);
    assert_int_equal(c.presence_batch_ms, 100);
    assert_int_equal(c.ntopic_rules, 0);
    assert_int_equal(c.nscripts, 0);
    assert_int_equal(c.scripts_watch, 0);
    assert_int_equal(c.hook_budget_ms, 10);
    assert_int_equal(c.script_memory_mb, 256);
    assert_int_equal(c.io_timeout_ms, 10000);
    assert_int_equal(c.http_pool_size, 16);
    assert_int_equal(c.http_timeout_ms, 5000);
    assert_int_equal(c.http_max_in_flight, 10000);
    assert_int_equal(c.http_max_response_bytes, 1048576);
    assert_int_equal(c.nplugins, 0);
    assert_int_equal(c.reuseport, 0);
    /* No cluster section: a single node, the cluster fields at their defaults. */
    assert_null(c.cluster_urls);
    assert_int_equal(c.ncluster_urls, 0);
    assert_int_equal(c.cluster_node_timeout_ms, 30000);
    assert_int_equal(c.cluster_heartbeat_ms, 1500);
    assert_int_equal(c.cluster_required, 0);
    assert_int_equal(c.cluster_queue_max, 10000);
    if (!getenv("HERALD_API_TOKEN")) assert_null(c.api_token);
    hd_config_free(&c);
    hd_config_free(&c); /* safe twice */
    /* An empty file is the defaults too (without the default's api token). */
    assert_int_equal(load("", &c, err, sizeof err), 0);
    assert_int_equal(c.port, 4000);
    assert_int_equal(c.nmounts, 2);
    assert_string_equal(c.source, path);
    assert_null(c.api_token);
    hd_config_free(&c);
}

static void test_values(void **st)
{
    (void)st;
    hd_config c;
    char err[512];
    int rc = load("-- a comment\n"
                  "local base = 1000\n"
                  "listen = { host = '127.0.0.1', port = 0, reuseport = true }\n"
                  "mounts = { '/ws', '/', '/a/b/' }\n"
                  "limits = { max_body_bytes = 10, max_message_bytes = 128, max_connections = 7,\n"
                  "           send_queue_bytes = 2048, max_header_bytes = 256, max_url_bytes = 64,\n"
                  "           max_topics_per_socket = 3, max_queued_bytes = 4096 }\n"
                  "timeouts = { ws_idle_ms = base * 2, http_idle_ms = 10, ws_close_ms = 20 }\n"
                  "log = { level = 'debug', format = 'json' }\n"
                  "reload = { recheck_joins = true }\n"
                  "drain = { timeout_ms = 100, announce_ms = 1, http_idle_ms = 2, http_ms = 3,\n"
                  "          flush_ms = 4, disconnect_sockets = false, disconnect_rate = 9 }\n"
                  "presence = { batch_ms = 7 }\n"
                  "api = { token = 'abc' }\n"
                  "scripts = { 'p.lua', '/abs/q.lua', budget_ms = 5, watch = true, memory_mb = 64,\n"
                  "            io_timeout_ms = 250, http = { pool_size = 3, max_response_bytes = 4096 } }\n"
                  "plugins = { big_topics = { patterns = { 'x:*' } }, rate_limit = true }\n"
                  "topics = { { match = 'public:*', tracked = false },\n"
                  "           { match = 'fast:*', throttle_ms = 50, debounce_ms = 5, max_wait_ms = 9,\n"
                  "             coalesce = 'latest', on_overflow = 'drop_oldest',\n"
                  "             max_queue_bytes = 1000, presence = true, history_size = 7 } }\n"
                  "function helper() return 1 end -- functions are allowed\n"
                  "cluster = { redis = 'redis://:pw@10.0.0.1:7000/2', node_timeout_ms = 1000,\n"
                  "            heartbeat_ms = 499, required = true, queue_max = 1 }\n",
                  &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 0);
    assert_int_equal(c.reuseport, 1);
    assert_int_equal(c.ncluster_urls, 1);
    assert_string_equal(c.cluster_urls[0], "redis://:pw@10.0.0.1:7000/2"); /* as written */
    assert_null(c.cluster_urls[1]);
    assert_int_equal(c.cluster_node_timeout_ms, 1000);
    assert_int_equal(c.cluster_heartbeat_ms, 499);
    assert_int_equal(c.cluster_required, 1);
    assert_int_equal(c.cluster_queue_max, 1);
    assert_int_equal(c.nmounts, 3);
    assert_string_equal(c.ws_paths[0], "/ws/websocket");
    assert_string_equal(c.ws_paths[1], "/websocket");
    assert_string_equal(c.ws_paths[2], "/a/b/websocket");
    assert_int_equal(c.max_body_bytes, 10);
    assert_int_equal(c.max_message_bytes, 128);
    assert_int_equal(c.max_connections, 7);
    assert_int_equal(c.send_queue_bytes, 2048);
    assert_int_equal(c.max_header_bytes, 256);
    assert_int_equal(c.max_url_bytes, 64);
    assert_int_equal(c.max_topics_per_socket, 3);
    assert_int_equal(c.max_queued_bytes, 4096);
    assert_int_equal(c.ws_idle_ms, 2000);
    assert_int_equal(c.http_idle_ms, 10);
    assert_int_equal(c.ws_close_ms, 20);
    assert_int_equal(c.log_level, HD_LOG_DEBUG);
    assert_int_equal(c.log_format, HD_LOG_JSON);
    assert_int_equal(c.recheck_joins, 1);
    assert_int_equal(c.drain_timeout_ms, 100);
    assert_int_equal(c.drain_announce_ms, 1);
    assert_int_equal(c.drain_http_idle_ms, 2);
    assert_int_equal(c.drain_http_ms, 3);
    assert_int_equal(c.drain_flush_ms, 4);
    assert_int_equal(c.drain_disconnect_sockets, 0);
    assert_int_equal(c.drain_disconnect_rate, 9);
    assert_int_equal(c.presence_batch_ms, 7);
    assert_string_equal(c.api_token, "abc");
    assert_int_equal(c.hook_budget_ms, 5);
    assert_int_equal(c.script_memory_mb, 64);
    assert_int_equal(c.io_timeout_ms, 250);
    assert_int_equal(c.http_pool_size, 3);
    assert_int_equal(c.http_max_response_bytes, 4096);
    assert_int_equal(c.http_timeout_ms, 5000); /* (the rest of scripts.http at its defaults) */
    assert_int_equal(c.http_max_in_flight, 10000);
    assert_int_equal(c.scripts_watch, 1);
    assert_int_equal(c.nscripts, 2);
    assert_string_equal(c.scripts[0], "/tmp/p.lua"); /* relative to the config's directory */
    assert_string_equal(c.scripts[1], "/abs/q.lua");
    assert_int_equal(c.nplugins, 2); /* in name order */
    assert_string_equal(c.plugins[0].name, "big_topics");
    assert_string_equal(c.plugins[0].options_json, "{\"patterns\":[\"x:*\"]}");
    assert_string_equal(c.plugins[1].name, "rate_limit");
    /* true: every option at its declared default. */
    assert_non_null(strstr(c.plugins[1].options_json, "\"joins_per_second\":10"));
    assert_non_null(strstr(c.plugins[1].options_json, "\"messages_per_second\":50"));
    assert_int_equal(c.ntopic_rules, 2);
    assert_string_equal(c.topic_rules[0].match, "public:*");
    assert_int_equal(c.topic_rules[0].set, HD_TP_TRACKED);
    assert_int_equal(c.topic_rules[0].policy.tracked, 0);
    const hd_topic_rule *r = &c.topic_rules[1];
    assert_int_equal(r->set, HD_TP_THROTTLE | HD_TP_DEBOUNCE | HD_TP_MAX_WAIT | HD_TP_COALESCE |
                                 HD_TP_OVERFLOW | HD_TP_MAX_QUEUE | HD_TP_PRESENCE | HD_TP_HISTORY);
    assert_int_equal(r->policy.tracked, 1); /* the default where not set */
    assert_int_equal(r->policy.presence, 1);
    assert_int_equal(r->policy.throttle_ms, 50);
    assert_int_equal(r->policy.debounce_ms, 5);
    assert_int_equal(r->policy.max_wait_ms, 9);
    assert_int_equal(r->policy.max_queue_bytes, 1000);
    assert_int_equal(r->policy.history_size, 7);
    assert_true(r->set & HD_TP_HISTORY);
    assert_false(r->set & HD_TP_RECOVER_MAX);
    assert_int_equal(r->policy.coalesce, HD_COALESCE_LATEST);
    assert_int_equal(r->policy.on_overflow, HD_OVERFLOW_DROP_OLDEST);
    hd_config_free(&c);
    assert_null(c.host);
}

static void test_errors(void **st)
{
    (void)st;
    /* Syntax: file and line. */
    bad("listen = {\nport = = 4000\n}\n", "$F:2:", NULL);
    bad("\n\n\nx = (\n", "$F:", NULL);
    bad("listen = {\nport = 4000\n", "$F:", "expected", NULL);
    /* Runtime errors carry the line too. */
    bad("local t = nil\n\nlocal x = t.field\n", "$F:3:", NULL);
    bad("error('custom failure')", "$F:1:", "custom failure", NULL);
    /* Types and ranges name the setting. */
    bad("listen = { port = 'x' }", "listen.port", "\"x\"", NULL);
    bad("listen = { port = 65536 }", "listen.port", "0 to 65535", NULL);
    bad("listen = { port = -1 }", "listen.port", NULL);
    bad("listen = { port = 1.5 }", "listen.port", NULL);
    bad("listen = 4000", "listen", "a table", NULL);
    bad("limits = { max_message_bytes = 127 }", "limits.max_message_bytes", NULL);
    bad("timeouts = { ws_idle_ms = 0 }", "timeouts.ws_idle_ms", NULL);
    bad("timeouts = { ws_message_ms = 5 }", "timeouts.ws_message_ms", NULL);
    bad("limits = { max_inbound_bytes = 100 }", "limits.max_inbound_bytes", NULL);
    bad("listen = { trusted_proxies = { '10.0.0.0/8', '10.0.0.0/33' } }", "listen.trusted_proxies",
        "item 2 is an address or a range", NULL);
    bad("listen = { trusted_proxies = '10.0.0.0/8' }", "listen.trusted_proxies", "(or {})", NULL);
    bad("listen = { trusted_proxies = { x = '::1' } }", "listen.trusted_proxies", "found key x", NULL);
    bad("limits = { client_messages_per_s = -1 }", "limits.client_messages_per_s", NULL);
    bad("limits = { client_messages_burst = 1.5 }", "limits.client_messages_burst", NULL);
    bad("limits = { client_messages_per_s = 5, client_messages_burst = 0 }",
        "limits.client_messages_burst", "at least 1 while limits.client_messages_per_s is set", NULL);
    /* A hook script or a plugin given as a config. */
    bad("return { authenticate = function() end }", "$F: returns a table",
        "as a hook script or a plugin does", NULL);
    bad("return function(options) end", "$F: returns a function", NULL);
    bad("log = { level = 'loud' }", "log.level", NULL);
    bad("log = { format = 'xml' }", "log.format", "one of \"text\", \"json\"", NULL);
    bad("api = { token = 5 }", "api.token", NULL);
    bad("reload = { recheck_joins = 1 }", "reload.recheck_joins", NULL);
    /* Unknown names. */
    bad("limitz = {}", "$F: unknown setting 'limitz'", NULL);
    bad("limits = { foo = 1 }", "unknown setting 'limits.foo'", NULL);
    bad("x = 1", "unknown setting 'x'", NULL);
    /* Mounts. */
    bad("mounts = { 'ws' }", "mounts", NULL);
    bad("mounts = { '/a//b' }", "mounts", NULL);
    bad("mounts = { '/x/websocket' }", "mounts", "without \"/websocket\"", NULL);
    bad("mounts = {}", "mounts", "non-empty", NULL);
    bad("mounts = '/socket'", "mounts", NULL);
    bad("mounts = { '/a', '/b', '/c', '/d', '/e', '/f', '/g', '/h', '/i', '/j', '/k', '/l',"
        " '/m', '/n', '/o', '/p', '/q' }", "mounts", "at most 16", NULL);
    /* Topic rules, scripts and plugins. */
    bad("topics = { { tracked = false } }", "topics", "match", NULL);
    bad("topics = { { match = 'a', color = 'red' } }", "topics", "color", NULL);
    bad("topics = { { match = 'a', coalesce = 'oldest' } }", "topics", "coalesce", NULL);
    bad("topics = { { match = 'a', throttle_ms = -1 } }",
        ": topics[1]: throttle_ms: expected an integer from 0 to 4294967295, got -1", NULL);
    bad("scripts = { 'a.lua', budget_ms = 0 }", "scripts", "budget_ms", NULL);
    bad("scripts = { 'a.lua', memory_mb = 8 }", "scripts", "memory_mb", NULL);
    bad("scripts = { 'a.lua', colour = 1 }", "scripts", NULL);
    bad("scripts = { 'a.lua', io_timeout_ms = 0 }", "scripts", "io_timeout_ms", NULL);
    bad("scripts = { 'a.lua', http = { pool_size = 0 } }", "scripts", "pool_size", "1 to 1024", NULL);
    bad("scripts = { 'a.lua', http = { max_response_bytes = 10 } }", "max_response_bytes", NULL);
    bad("scripts = { 'a.lua', http = { keepalive = true } }", "scripts", "keepalive", NULL);
    bad("scripts = { 'a.lua', http = 5 }", "scripts", "http", NULL);
    bad("plugins = { ['bad name'] = true }", "plugins", NULL);
    bad("plugins = { jwt = 'yes' }", "plugins", NULL);
    bad("plugins = { jwt = { f = function() end } }", "plugins", NULL);
    /* Bytecode and unreadable files. */
    bad("\033Lua", "bytecode", NULL);
    hd_config c;
    char err[512];
    assert_int_equal(hd_config_load(&c, "/nonexistent/x.lua", err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "/nonexistent/x.lua"));
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(hd_config_load(&c, "/tmp", err, sizeof err), HD_ECONFIG); /* a directory */
    /* A short buffer truncates the message, never overflows it. */
    char tiny[8];
    memset(tiny, 'Z', sizeof tiny);
    assert_int_equal(load("limitz = {}", &c, tiny, 5), HD_ECONFIG);
    assert_int_equal(strlen(tiny), 4);
    assert_int_equal(tiny[5], 'Z');
}

/* Counts the lines of text (no newline after the last). */
static int lines_of(const char *text)
{
    int n = *text != 0;
    for (const char *p = text; *p; p++) n += *p == '\n';
    return n;
}

/* Every error of a config that runs, one line each, each naming the file. */
static void test_every_error(void **st)
{
    (void)st;
    hd_config c;
    char err[4096];
    int rc = load("listen = { port = 'x' }\nlimits = { max_conections = 5 }\n"
                  "log = { level = 'loud' }\n",
                  &c, err, sizeof err);
    assert_int_equal(rc, HD_ECONFIG);
    assert_int_equal(lines_of(err), 3);
    char want[1024];
    snprintf(want, sizeof want,
             "%s: listen.port: expected an integer from 0 to 65535, got \"x\"\n"
             "%s: unknown setting 'limits.max_conections'\n"
             "%s: log.level: expected one of \"debug\", \"info\", \"warn\", \"error\", got \"loud\"",
             path, path, path);
    assert_string_equal(err, want);
    /* Plugins' options among them, checked against the plugins compiled in. */
    rc = load("plugins = { rate_limit = { per_secnd = 5 }, jwt = { secret = 31337 }, nope = true,\n"
              "            big_topics = { patterns = 'x' },\n"
              "            topic_acl = { rules = { { match = 'a', allow = 'x' } } } }\n"
              "timeouts = { ws_idle_ms = 0 }\n",
              &c, err, sizeof err);
    assert_int_equal(rc, HD_ECONFIG);
    assert_int_equal(lines_of(err), 6);
    static const char *const parts[] = {
        ": timeouts.ws_idle_ms: expected an integer from 10 to 86400000, got 0\n",
        ": plugins.big_topics.patterns: expected a non-empty list, each item a non-empty string, got \"x\"\n",
        ": plugins.jwt.secret: expected a non-empty string, got a number\n",
        ": plugins: unknown plugin 'nope'\n",
        (": plugins.rate_limit: unknown option \"per_secnd\" (rate_limit takes joins_per_second, "
         "messages_per_second)\n"),
        ": plugins.topic_acl.rules: rule 1: allow must be \"all\", \"owner\", \"none\" or a table of assigns",
    };
    const char *at = err;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        snprintf(want, sizeof want, "%s%s", path, parts[i]);
        if (strncmp(at, want, strlen(want)) != 0)
            fail_msg("line %zu: got \"%s\", expected \"%s\"", i + 1, at, want);
        at += strlen(want);
    }
    assert_null(strstr(err, "31337")); /* a secret option's value is never shown */
    /* A file that does not run has its one error. */
    rc = load("listen = { port = 'x' }\nerror('stop')\n", &c, err, sizeof err);
    assert_int_equal(rc, HD_ECONFIG);
    assert_int_equal(lines_of(err), 1);
    /* Valid plugin options load, defaults filled in. */
    rc = load("plugins = { jwt = { secret = 'k', leeway_s = 3 }, topic_acl = { rules = {} } }", &c, err,
              sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.nplugins, 2);
    assert_non_null(strstr(c.plugins[0].options_json, "\"param\":\"token\""));
    assert_non_null(strstr(c.plugins[0].options_json, "\"leeway_s\":3"));
    assert_non_null(strstr(c.plugins[1].options_json, "\"default\":\"deny\""));
    hd_config_free(&c);
}

/* plugins as a list: hd_config.plugins in list order (the order they are
 * loaded and run in), a plain name with its defaults; the same options
 * checked as in the map form; a plugin listed twice and the two forms mixed
 * are errors. */
static void test_plugin_list(void **st)
{
    (void)st;
    hd_config c;
    char err[1024];
    int rc = load("plugins = { { 'topic_acl', rules = {}, default = 'allow' }, 'rate_limit',\n"
                  "            { 'big_topics', patterns = { 'x:*' } }, { 'jwt', secret = 'k' } }\n",
                  &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.nplugins, 4);
    assert_string_equal(c.plugins[0].name, "topic_acl");
    assert_non_null(strstr(c.plugins[0].options_json, "\"default\":\"allow\""));
    assert_string_equal(c.plugins[1].name, "rate_limit");
    assert_non_null(strstr(c.plugins[1].options_json, "\"joins_per_second\":10"));
    assert_string_equal(c.plugins[2].name, "big_topics");
    assert_string_equal(c.plugins[2].options_json, "{\"patterns\":[\"x:*\"]}");
    assert_string_equal(c.plugins[3].name, "jwt");
    assert_non_null(strstr(c.plugins[3].options_json, "\"secret\":\"k\""));
    hd_config_free(&c);
    /* The map form keeps name order. */
    rc = load("plugins = { rate_limit = true, big_topics = { patterns = { 'x' } } }", &c, err,
              sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.nplugins, 2);
    assert_string_equal(c.plugins[0].name, "big_topics");
    assert_string_equal(c.plugins[1].name, "rate_limit");
    hd_config_free(&c);
    bad("plugins = { { 'rate_limit', per_secnd = 5 } }",
        ": plugins.rate_limit: unknown option \"per_secnd\" (rate_limit takes joins_per_second, "
        "messages_per_second)",
        NULL);
    bad("plugins = { 'rate_limit', 'big_topics', { 'rate_limit' } }",
        ": plugins: expected each plugin listed once, got \"rate_limit\" as items 1 and 3", NULL);
    bad("plugins = { 'rate_limit', big_topics = { patterns = { 'x' } } }",
        ": plugins: expected either a list of plugins or a table of name = options, not both",
        "got a table with both", NULL);
    bad("plugins = { 'nope' }", ": plugins: unknown plugin 'nope'", NULL);
}

/* cluster: shards in config order, each URL checked by hd_redis_url_parse
 * at load (so by `herald check` too), errors naming the setting and, in a
 * list, the item. */
static void test_cluster(void **st)
{
    (void)st;
    hd_config c;
    char err[1024];
    /* A list of shards; unset keys take their defaults. */
    int rc = load("local port = 6380\n"
                  "cluster = { redis = { 'redis://a', 'redis://b:' .. port, 'redis://u:p@[::1]/15' } }\n",
                  &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.ncluster_urls, 3);
    assert_string_equal(c.cluster_urls[0], "redis://a");
    assert_string_equal(c.cluster_urls[1], "redis://b:6380");
    assert_string_equal(c.cluster_urls[2], "redis://u:p@[::1]/15");
    assert_null(c.cluster_urls[3]);
    assert_int_equal(c.cluster_node_timeout_ms, 30000);
    assert_int_equal(c.cluster_heartbeat_ms, 1500);
    assert_int_equal(c.cluster_required, 0);
    assert_int_equal(c.cluster_queue_max, 10000);
    assert_int_equal(c.reuseport, 0);
    hd_config_free(&c);
    assert_null(c.cluster_urls);
    assert_int_equal(c.ncluster_urls, 0);
    /* The bounds of every range are accepted. */
    rc = load("cluster = { redis = 'redis://h', node_timeout_ms = 3600000, heartbeat_ms = 600000,\n"
              "            queue_max = 10000000, required = false }\n",
              &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.cluster_node_timeout_ms, 3600000);
    assert_int_equal(c.cluster_heartbeat_ms, 600000);
    assert_int_equal(c.cluster_queue_max, 10000000);
    hd_config_free(&c);
    rc = load("cluster = { redis = { 'redis://h' }, node_timeout_ms = 1000, heartbeat_ms = 100 }\n",
              &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.ncluster_urls, 1);
    assert_int_equal(c.cluster_node_timeout_ms, 1000);
    assert_int_equal(c.cluster_heartbeat_ms, 100);
    hd_config_free(&c);
    /* ws.allowed_origins: kept lower-case; none = any origin. */
    assert_null(c.allowed_origins);
    rc = load("ws = { allowed_origins = { 'https://App.Example.com:8443', '*.Example.org' } }\n", &c, err,
              sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.nallowed_origins, 2);
    assert_string_equal(c.allowed_origins[0], "https://app.example.com:8443");
    assert_string_equal(c.allowed_origins[1], "*.example.org");
    hd_config_free(&c);
    /* listen.trusted_proxies: parsed ranges; {} trusts none. */
    rc = load("listen = { trusted_proxies = { '10.1.2.3/8', '2001:db8::/32', '192.0.2.7' } }\n", &c, err,
              sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.ntrusted, 3);
    assert_int_equal(c.trusted[0].bits, 96 + 8);
    hd_config_free(&c);
    rc = load("listen = { trusted_proxies = {} }\n", &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.ntrusted, 0);
    hd_config_free(&c);
    for (const char *const *b = (const char *const[]){"'example.com'", "'https://a/b'", "'*'", "'**.x'",
                                                       "5", NULL};
         *b; b++) {
        char text[128];
        snprintf(text, sizeof text, "ws = { allowed_origins = { %s } }\n", *b);
        assert_int_not_equal(load(text, &c, err, sizeof err), 0);
        assert_non_null(strstr(err, "ws.allowed_origins: expected a list whose item 1 is an origin"));
    }
    /* A stable node name. */
    assert_null(c.cluster_node);
    rc = load("cluster = { redis = 'redis://h', node = 'web-1.eu_2' }\n", &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_string_equal(c.cluster_node, "web-1.eu_2");
    hd_config_free(&c);
    assert_null(c.cluster_node);
    rc = load("cluster = { redis = 'redis://h', node = 'a b' }\n", &c, err, sizeof err);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(err, "cluster.node: expected a name of 1 to 48 letters"));
    /* 16 shards at most. */
    rc = load("local t = {} for i = 1, 16 do t[i] = 'redis://h:' .. i end cluster = { redis = t }",
              &c, err, sizeof err);
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.ncluster_urls, 16);
    assert_string_equal(c.cluster_urls[15], "redis://h:16");
    assert_null(c.cluster_urls[16]);
    hd_config_free(&c);
    bad("local t = {} for i = 1, 17 do t[i] = 'redis://h:' .. i end cluster = { redis = t }",
        "$F: cluster.redis: expected a list of at most 16 items", NULL);

    /* URLs: the parser's reason, the setting, the item (from 1). */
    bad("cluster = { redis = { 'redis://a', 'redis://b:70000' } }",
        "$F: cluster.redis[2]: port out of range", NULL);
    bad("cluster = { redis = { 'redis://a:0' } }", "$F: cluster.redis[1]: port out of range", NULL);
    bad("cluster = { redis = 'redis://b:70000' }", "$F: cluster.redis: port out of range", NULL);
    bad("cluster = { redis = 'rediss://b' }", "$F: cluster.redis: rediss:// (TLS) is not supported", NULL);
    bad("cluster = { redis = 'http://b' }", "cluster.redis: only the redis:// scheme", NULL);
    bad("cluster = { redis = 'b:6379' }", "cluster.redis: expected redis://host", NULL);
    bad("cluster = { redis = 'redis://' }", "cluster.redis: host is required", NULL);
    bad("cluster = { redis = 'redis://h/16' }", "cluster.redis: db out of range", NULL);
    bad("cluster = { redis = 'redis://h?x=1' }", "cluster.redis: query strings are not supported", NULL);
    bad("cluster = { redis = 'redis://user@h' }", "cluster.redis: a user without a password", NULL);
    bad("cluster = { redis = { 'redis://h', 'redis://' .. ('a'):rep(256) } }",
        "cluster.redis[2]: host is longer than 255 bytes", NULL);
    /* The reason never repeats the URL (it may hold a password). */
    hd_config c2;
    assert_int_equal(load("cluster = { redis = 'redis://:hunter2@h:0' }", &c2, err, sizeof err),
                     HD_ECONFIG);
    assert_non_null(strstr(err, "cluster.redis: port out of range"));
    assert_null(strstr(err, "hunter2"));
    /* Shapes. */
    bad("cluster = { redis = {} }", "$F: cluster.redis: expected a non-empty list", NULL);
    bad("cluster = { redis = 6379 }", "cluster.redis: expected a redis:// URL or a non-empty list", "got 6379",
        NULL);
    bad("cluster = { redis = { 'redis://h', 5 } }", "cluster.redis: expected a list whose item 2 is a string",
        NULL);
    bad("cluster = { redis = { 'redis://h', x = 'redis://i' } }", "cluster.redis: expected a list", NULL);
    bad("cluster = { redis = 'redis://:hunter2@h\\0' }", "cluster.redis: expected a redis:// URL",
        "got a string with a NUL byte", NULL);
    assert_int_equal(load("cluster = { redis = 'redis://:hunter2@h\\0' }", &c2, err, sizeof err),
                     HD_ECONFIG);
    assert_null(strstr(err, "hunter2"));
    bad("cluster = {}", "$F: cluster.redis: expected a redis:// URL or a list of them", "got nil", NULL);
    bad("cluster = { required = true }", "cluster.redis", "got nil", NULL);
    bad("cluster = 'redis://h'", "$F: cluster: expected a table", NULL);
    bad("cluster = { redis = 'redis://h', nodes = 3 }", "$F: unknown setting 'cluster.nodes'", NULL);
    /* Ranges. */
    bad("cluster = { redis = 'redis://h', node_timeout_ms = 999 }",
        "$F: cluster.node_timeout_ms: expected an integer from 1000 to 3600000, got 999", NULL);
    bad("cluster = { redis = 'redis://h', node_timeout_ms = 3600001 }", "cluster.node_timeout_ms", NULL);
    bad("cluster = { redis = 'redis://h', node_timeout_ms = 1500.5 }", "cluster.node_timeout_ms", NULL);
    bad("cluster = { redis = 'redis://h', heartbeat_ms = 99 }",
        "$F: cluster.heartbeat_ms: expected an integer from 100 to 600000, got 99", NULL);
    bad("cluster = { redis = 'redis://h', heartbeat_ms = 600001, node_timeout_ms = 3600000 }",
        "cluster.heartbeat_ms: expected an integer from 100 to 600000", NULL);
    bad("cluster = { redis = 'redis://h', queue_max = 0 }",
        "$F: cluster.queue_max: expected an integer from 1 to 10000000, got 0", NULL);
    bad("cluster = { redis = 'redis://h', queue_max = 10000001 }", "cluster.queue_max", NULL);
    bad("cluster = { redis = 'redis://h', required = 'yes' }",
        "$F: cluster.required: expected true or false, got \"yes\"", NULL);
    bad("cluster = { redis = 'redis://h', required = 1 }", "cluster.required: expected true or false", NULL);
    /* heartbeat_ms < node_timeout_ms / 2: equal to half is refused. */
    bad("cluster = { redis = 'redis://h', node_timeout_ms = 1000, heartbeat_ms = 500 }",
        "$F: cluster.heartbeat_ms: expected less than half of cluster.node_timeout_ms (1000), got 500",
        NULL);
    bad("cluster = { redis = 'redis://h', heartbeat_ms = 15000 }",
        "cluster.heartbeat_ms: expected less than half of cluster.node_timeout_ms (30000), got 15000", NULL);
    bad("cluster = { redis = 'redis://h', node_timeout_ms = 2000 }", /* the default heartbeat 1500 */
        "cluster.heartbeat_ms: expected less than half of cluster.node_timeout_ms (2000), got 1500", NULL);
    /* listen.reuseport */
    bad("listen = { reuseport = 1 }", "$F: listen.reuseport: expected true or false, got 1", NULL);
    bad("listen = { reuseport = 'true' }", "listen.reuseport", NULL);
}

/* The sandbox: only the allow-listed globals exist. */
static void test_sandbox(void **st)
{
    (void)st;
    bad("os.execute('true')", "$F:1:", "execute", NULL);
    bad("io.write('x')", "$F:1:", "io", NULL);
    bad("io.open('/etc/passwd')", "io", NULL);
    bad("require('os')", "require", NULL);
    bad("dofile('/etc/passwd')", "dofile", NULL);
    bad("loadfile('/etc/passwd')", "loadfile", NULL);
    bad("loadstring('return 1')()", "loadstring", NULL);
    bad("load(function() return nil end)", "load", NULL);
    bad("setmetatable({}, {})", "setmetatable", NULL);
    bad("getfenv(1)", "getfenv", NULL);
    bad("rawset(_G, 'x', 1)", "rawset", NULL);
    bad("debug.sethook()", "debug", NULL);
    bad("package.loaded.os.execute('true')", "package", NULL);
    bad("jit.off()", "jit", NULL);
    bad("collectgarbage()", "collectgarbage", NULL);
    bad("os.exit(3)", "exit", NULL);
    bad("os.remove('/tmp/x')", "remove", NULL);
    bad("print('x')", "print", NULL);
    /* What a config may use. */
    hd_config c;
    char err[512];
    setenv("HERALD_TEST_CFG_PORT", "4321", 1);
    int rc = load("local p = tonumber(os.getenv('HERALD_TEST_CFG_PORT'))\n"
                  "local m = {}\n"
                  "for i, name in ipairs({ 'a', 'b' }) do m[#m + 1] = '/' .. name:rep(2) end\n"
                  "table.sort(m)\n"
                  "assert(type(os.time()) == 'number')\n"
                  "local ok = pcall(error, 'caught')\n"
                  "assert(not ok)\n"
                  "listen = { port = p + math.floor(0.5), host = string.format('%s', '::1') }\n"
                  "mounts = m\n",
                  &c, err, sizeof err);
    unsetenv("HERALD_TEST_CFG_PORT");
    if (rc) fail_msg("%s", err);
    assert_int_equal(c.port, 4321);
    assert_string_equal(c.host, "::1");
    assert_string_equal(c.ws_paths[0], "/aa/websocket");
    assert_string_equal(c.ws_paths[1], "/bb/websocket");
    hd_config_free(&c);
}

/* The library tables a config sees are its own: changing them must not
 * change how the schema (lua/herald/config.lua, same Lua state) checks
 * the settings. */
static void test_sandbox_tables(void **st)
{
    (void)st;
    bad("math.floor = function(x) return x end\nlimits = { max_message_bytes = 200.5 }",
        "limits.max_message_bytes", NULL);
    bad("string.match = function() return nil end\nmounts = { '/ok' }\nlisten = { port = 'x' }",
        "listen.port", NULL);
    bad("string.format = nil\nlisten = { port = 'x' }", "listen.port", NULL);
}

/* Strings reach C as NUL-terminated copies: one with a NUL inside would be
 * cut short there (an api.token 'a\0long-secret' would accept "a"), so it
 * must be refused. */
static void test_nul_in_strings(void **st)
{
    (void)st;
    bad("api = { token = 'a\\0long-secret' }", "api.token", "got a string with a NUL byte", NULL);
    hd_config c;
    char err[512];
    assert_int_equal(load("api = { token = 'a\\0long-secret' }", &c, err, sizeof err), HD_ECONFIG);
    assert_null(strstr(err, "long-secret")); /* errors are logged: a token never is */
    /* Nor a string literal a syntax error stopped at. */
    bad("api = { token = \"s3cretvalue }\n", "$F:1: unfinished string near a string literal (not shown)",
        NULL);
    bad("api = { token = 's3cretvalue' 'x' }\n", "$F:1:", "near a string literal (not shown)", NULL);
    bad("api = { token = [==[s3cretvalue]==] [[x]] }\n", "near a string literal (not shown)", NULL);
    bad("api = { token = 5 6 }\n", "$F:1: '}' expected near '6'", NULL); /* others are shown */
    assert_int_equal(load("api = { token = \"s3cretvalue }\n", &c, err, sizeof err), HD_ECONFIG);
    assert_null(strstr(err, "s3cretvalue"));
    /* The rewrite stays inside a buffer that holds the start of the token
     * but not all of the replacement. */
    char shortbuf[128];
    size_t room = strlen(path) + sizeof ":1: unfinished string near '\"s3c";
    memset(shortbuf, 'Z', sizeof shortbuf);
    assert_int_equal(load("api = { token = \"s3cretvalue }\n", &c, shortbuf, room), HD_ECONFIG);
    assert_int_equal(shortbuf[room], 'Z');
    assert_int_equal(strlen(shortbuf), room - 1);
    assert_null(strstr(shortbuf, "s3c"));
    bad("listen = { host = '127.0.0.1\\0x' }", "listen.host", NULL);
    bad("topics = { { match = '\\0p:*', tracked = false } }", "topics", NULL);
    bad("scripts = { 'a.lua\\0.txt' }", "scripts", NULL);
}

/* Loads text in a child process, so that a hang fails the test instead of
 * the run. Returns the load's rc, or 1 when the child did not finish
 * within secs. */
static int load_bounded(const char *text, int secs, char *err, size_t errlen)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        hd_config c;
        char e[512] = "";
        int rc = load(text, &c, e, sizeof e);
        if (!rc) hd_config_free(&c);
        if (write(fds[1], &rc, sizeof rc) < 0 || write(fds[1], e, sizeof e) < 0) _exit(2);
        _exit(0);
    }
    close(fds[1]);
    struct pollfd pf = {fds[0], POLLIN, 0};
    int rc = 1;
    if (poll(&pf, 1, secs * 1000) == 1 && read(fds[0], &rc, sizeof rc) == (ssize_t)sizeof rc) {
        if (read(fds[0], err, errlen) <= 0) err[0] = 0;
        err[errlen - 1] = 0;
    } else {
        kill(pid, SIGKILL);
        snprintf(err, errlen, "still running after %d s", secs);
        rc = 1;
    }
    close(fds[0]);
    waitpid(pid, NULL, 0);
    return rc;
}

static void runaway_with(const char *text, const char *want)
{
    char err[512];
    int rc = load_bounded(text, 10, err, sizeof err);
    if (rc != HD_ECONFIG || !strstr(err, want))
        fail_msg("runaway config %s: rc %d, %s (expected an error with \"%s\")", text, rc, err, want);
}

static void runaway(const char *text) { runaway_with(text, "instructions"); }

/* A runaway file ends with an error: the instruction budget, which a
 * pcall inside the file must not be able to swallow. */
static void test_budget(void **st)
{
    (void)st;
    runaway("while true do end");
    runaway("local function f() return f() end f()");     /* a tail call loop */
    runaway("local t = {} for i = 1, 1e12 do t[1] = i end");
    runaway("repeat local x = ('x'):rep(10) until false");
    runaway("while true do pcall(function() while true do end end) end");
    runaway("xpcall(function() while true do end end, function() while true do end end)");
    runaway("local ok = true while ok do ok = not pcall(function() while true do end end) or true end");
    /* Memory: the heap cap, and string.rep (one C call) refused up front. */
    runaway_with("local t = {} for i = 1, 1e7 do t[i] = ('x'):rep(1000) .. i end", "MiB of Lua memory");
    runaway_with("local t = {} pcall(function() for i = 1, 1e7 do t[i] = ('x'):rep(1000) .. i end end)",
                 "MiB of Lua memory");
    runaway_with("local s = ('x'):rep(2^31)", "string.rep: the result would be over 16 MiB");
    runaway_with("local s = string.rep('ab', 2^30, ',')", "string.rep");
}

static void test_env_port(void **st)
{
    (void)st;
    hd_config c;
    char err[512];
    setenv("HERALD_PORT", "5555", 1);
    assert_int_equal(load("listen = { port = 1 }", &c, err, sizeof err), 0);
    assert_int_equal(c.port, 5555);
    hd_config_free(&c);
    assert_int_equal(hd_config_load(&c, NULL, err, sizeof err), 0);
    assert_int_equal(c.port, 5555);
    hd_config_free(&c);
    setenv("HERALD_PORT", "0", 1);
    assert_int_equal(load("", &c, err, sizeof err), 0);
    assert_int_equal(c.port, 0);
    hd_config_free(&c);
    setenv("HERALD_PORT", "", 1); /* empty: ignored */
    assert_int_equal(load("listen = { port = 7 }", &c, err, sizeof err), 0);
    assert_int_equal(c.port, 7);
    hd_config_free(&c);
    static const char *const bads[] = {"nope", "65536", "-1", "1.5", "0x"};
    for (int i = 0; i < 5; i++) {
        setenv("HERALD_PORT", bads[i], 1);
        assert_int_equal(load("", &c, err, sizeof err), HD_ECONFIG);
        assert_non_null(strstr(err, "HERALD_PORT"));
    }
    unsetenv("HERALD_PORT");
}

/* ---- topic globs against a reference matcher ------------------------------------ */

static int ref_glob(const char *p, const char *s, size_t n)
{
    if (!*p) return n == 0;
    if (*p == '*') {
        for (size_t i = 0; i <= n; i++)
            if (ref_glob(p + 1, s + i, n - i)) return 1;
        return 0;
    }
    return n > 0 && *p == *s && ref_glob(p + 1, s + 1, n - 1);
}

static void test_glob(void **st)
{
    (void)st;
    assert_true(hd_glob_match("public:*", "public:news", 11));
    assert_true(hd_glob_match("public:*", "public:", 7));
    assert_false(hd_glob_match("public:*", "private:x", 9));
    assert_false(hd_glob_match("public:*", "public", 6));
    assert_true(hd_glob_match("a*b*c", "axxbyyc", 7));
    assert_false(hd_glob_match("a*b*c", "axxbyy", 6));
    assert_true(hd_glob_match("*", "", 0));
    assert_true(hd_glob_match("**", "abc", 3));
    assert_true(hd_glob_match("", "", 0));
    assert_false(hd_glob_match("", "a", 1));
    assert_true(hd_glob_match("room:*:chat", "room:1:chat", 11));
    assert_false(hd_glob_match("room:*:chat", "room:1:chat:x", 13));
    assert_true(hd_glob_match("*x", "xxxx", 4));
    /* The length bounds the topic; bytes past it are not looked at. */
    assert_true(hd_glob_match("ab", "abc", 2));
    assert_false(hd_glob_match("abc", "abc", 2));
    /* NUL inside a topic never matches a literal (patterns end at NUL). */
    assert_true(hd_glob_match("a*", "a\0b", 3));
    uint64_t r = 1;
    char pat[12], s[12];
    for (int k = 0; k < 300000; k++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t pl = r % 8, sl = (r >> 8) % 10;
        for (size_t i = 0; i < pl; i++) pat[i] = "ab*"[(r >> (16 + 2 * i)) % 3];
        pat[pl] = 0;
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        for (size_t i = 0; i < sl; i++) s[i] = "ab"[(r >> i) & 1];
        if (hd_glob_match(pat, s, sl) != ref_glob(pat, s, sl))
            fail_msg("glob '%s' on '%.*s': got %d", pat, (int)sl, s, hd_glob_match(pat, s, sl));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults), cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),   cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_sandbox_tables), cmocka_unit_test(test_nul_in_strings),
        cmocka_unit_test(test_budget),   cmocka_unit_test(test_env_port),
        cmocka_unit_test(test_glob),     cmocka_unit_test(test_cluster),
        cmocka_unit_test(test_every_error), cmocka_unit_test(test_plugin_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
