/* tests/unit/test_config.c: loading, defaults, errors naming file and line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static int load(const char *text, hd_config *c, char *err, size_t errlen)
{
    strcpy(path, "/tmp/herald-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = hd_config_load(c, path, err, errlen);
    unlink(path);
    return rc;
}

static void test_defaults(void **st)
{
    (void)st;
    hd_config c;
    char err[512];
    assert_int_equal(hd_config_load(&c, NULL, err, sizeof err), 0);
    assert_int_equal(c.port, 4000);
    assert_string_equal(c.host, "0.0.0.0");
    assert_int_equal(c.nmounts, 2);
    assert_string_equal(c.ws_paths[0], "/push_socket/websocket");
    assert_string_equal(c.ws_paths[1], "/socket/websocket");
    assert_int_equal(c.max_message_bytes, 65536);
    assert_int_equal(c.send_queue_bytes, 1048576);
    assert_int_equal(c.max_header_bytes, 16384);
    assert_int_equal(c.max_body_bytes, 1048576);
    assert_int_equal(c.max_topics_per_socket, 100);
    assert_int_equal(c.ws_idle_ms, 45000);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_int_equal(c.drain_disconnect_sockets, 1);
    hd_config_free(&c);
    hd_config_free(&c); /* safe twice */
}

static void test_values(void **st)
{
    (void)st;
    hd_config c;
    char err[512];
    assert_int_equal(load("listen = { host = '127.0.0.1', port = 0 }\n"
                          "mounts = { '/ws' }\nlimits = { max_body_bytes = 10 }\n"
                          "api = { token = 'abc' }\nscripts = { 'p.lua', budget_ms = 5 }\n"
                          "plugins = { big_topics = { patterns = { 'x:*' } } }\n"
                          "topics = { { match = 'public:*', tracked = false } }\n",
                          &c, err, sizeof err),
                     0);
    assert_int_equal(c.port, 0);
    assert_string_equal(c.ws_paths[0], "/ws/websocket");
    assert_int_equal(c.max_body_bytes, 10);
    assert_string_equal(c.api_token, "abc");
    assert_int_equal(c.hook_budget_ms, 5);
    assert_string_equal(c.scripts[0], "/tmp/p.lua");
    assert_string_equal(c.plugins[0].name, "big_topics");
    assert_string_equal(c.plugins[0].options_json, "{\"patterns\":[\"x:*\"]}");
    assert_int_equal(c.ntopic_rules, 1);
    assert_int_equal(c.topic_rules[0].policy.tracked, 0);
    assert_true(hd_glob_match("public:*", "public:news", 11));
    assert_false(hd_glob_match("public:*", "private:x", 9));
    assert_true(hd_glob_match("a*b*c", "axxbyyc", 7));
    assert_false(hd_glob_match("a*b*c", "axxbyy", 6));
    hd_config_free(&c);
}

static void test_errors(void **st)
{
    (void)st;
    hd_config c;
    char err[512];
    assert_int_equal(load("listen = {\nport = 4000\n", &c, err, sizeof err), HD_ECONFIG);
    char want[80];
    snprintf(want, sizeof want, "%s:", path);
    assert_non_null(strstr(err, want));
    assert_int_equal(load("listen = { port = 'x' }", &c, err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "listen.port"));
    assert_int_equal(load("limitz = {}", &c, err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "unknown setting 'limitz'"));
    assert_int_equal(load("limits = { foo = 1 }", &c, err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "limits.foo"));
    assert_int_equal(load("while true do end", &c, err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "instructions"));
    assert_int_equal(load("io.write('x')", &c, err, sizeof err), HD_ECONFIG);
    assert_int_equal(load("os.execute('true')", &c, err, sizeof err), HD_ECONFIG);
    assert_int_equal(load("\033Lua", &c, err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "bytecode"));
    assert_int_equal(hd_config_load(&c, "/nonexistent/x.lua", err, sizeof err), HD_ECONFIG);
    assert_non_null(strstr(err, "cannot open"));
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
    setenv("HERALD_PORT", "nope", 1);
    assert_int_equal(load("", &c, err, sizeof err), HD_ECONFIG);
    unsetenv("HERALD_PORT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_defaults), cmocka_unit_test(test_values),
                                       cmocka_unit_test(test_errors), cmocka_unit_test(test_env_port)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
