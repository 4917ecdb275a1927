/* tests/unit/test_log.c: the two line formats of core/log.c, exact bytes.
 * The json format must give one valid JSON object per line whatever the
 * message holds (control characters, quotes, bytes that are not UTF-8, a
 * message too long for the line), with a "conn N: " prefix moved into a
 * "conn" field; every such line is also parsed back with jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2026-11-22T11:40:01.123Z */
static const struct timeval when = {1795347601, 123456};

/* The line of msg (NUL-terminated, without its '\n'; asserted present). */
static const char *line(hd_log_format f, hd_log_level lv, const char *msg, size_t len, size_t cap)
{
    static char out[16384];
    assert_true(cap < sizeof out);
    size_t n = hd_log_format_line(out, cap, f, lv, &when, msg, len);
    assert_true(n > 0 && n <= cap);
    assert_int_equal(out[n - 1], '\n');
    assert_null(memchr(out, '\n', n - 1));
    out[n - 1] = 0;
    return out;
}

/* The json line of msg, checked to parse as an object; returns it (the
 * caller decrefs). */
static json_t *json_line(const char *msg, size_t len, size_t cap)
{
    const char *l = line(HD_LOG_JSON, HD_LOG_INFO, msg, len, cap);
    json_error_t e;
    json_t *o = json_loads(l, JSON_ALLOW_NUL, &e);
    if (!o) fail_msg("not JSON (%s): %s", e.text, l);
    assert_true(json_is_object(o));
    assert_string_equal(json_string_value(json_object_get(o, "ts")), "2026-11-22T11:40:01.123Z");
    assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
    assert_true(json_is_string(json_object_get(o, "msg")));
    return o;
}

static void test_text(void **st)
{
    (void)st;
    const char m[] = "listening on http://127.0.0.1:4000";
    assert_string_equal(line(HD_LOG_TEXT, HD_LOG_WARN, m, strlen(m), 4096),
                        "2026-11-22T11:40:01.123Z [warn] listening on http://127.0.0.1:4000");
    /* conn prefixes stay in the text. */
    assert_string_equal(line(HD_LOG_TEXT, HD_LOG_DEBUG, "conn 7: x", 9, 4096),
                        "2026-11-22T11:40:01.123Z [debug] conn 7: x");
    /* Cut to the buffer, still one line. */
    assert_string_equal(line(HD_LOG_TEXT, HD_LOG_ERROR, m, strlen(m), 40),
                        "2026-11-22T11:40:01.123Z [error] listen");
}

static void test_json(void **st)
{
    (void)st;
    const char m[] = "listening on http://127.0.0.1:4000";
    assert_string_equal(line(HD_LOG_JSON, HD_LOG_INFO, m, strlen(m), 4096),
                        "{\"ts\":\"2026-11-22T11:40:01.123Z\",\"level\":\"info\","
                        "\"msg\":\"listening on http://127.0.0.1:4000\"}");
    assert_string_equal(line(HD_LOG_JSON, HD_LOG_DEBUG, "conn 42: HTTP 400: bad", 22, 4096),
                        "{\"ts\":\"2026-11-22T11:40:01.123Z\",\"level\":\"debug\","
                        "\"msg\":\"HTTP 400: bad\",\"conn\":42}");
    assert_string_equal(line(HD_LOG_JSON, HD_LOG_ERROR, "", 0, 4096),
                        "{\"ts\":\"2026-11-22T11:40:01.123Z\",\"level\":\"error\",\"msg\":\"\"}");
}

static void test_json_conn_prefix(void **st)
{
    (void)st;
    static const struct {
        const char *msg;
        long long conn; /* -1: no field */
        const char *rest;
    } cases[] = {
        {"conn 1: a", 1, "a"},
        {"conn 18446744073709551615: max", -2, "max"}, /* 19 digits is the cap */
        {"conn 1844674407370955161: big", 1844674407370955161LL, "big"},
        {"conn : a", -1, "conn : a"},
        {"conn 12 a", -1, "conn 12 a"},
        {"conn 12:a", -1, "conn 12:a"},
        {"connect 5: a", -1, "connect 5: a"},
        {"Conn 5: a", -1, "Conn 5: a"},
        {"conn 5: ", 5, ""},
        {"conn 5:  two spaces", 5, " two spaces"},
        {"xconn 5: a", -1, "xconn 5: a"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *o = json_line(cases[i].msg, strlen(cases[i].msg), 4096);
        json_t *c = json_object_get(o, "conn");
        if (cases[i].conn == -2) {
            /* Too many digits for the prefix: the message is kept whole. */
            assert_null(c);
            assert_string_equal(json_string_value(json_object_get(o, "msg")), cases[i].msg);
        } else if (cases[i].conn < 0) {
            assert_null(c);
            assert_string_equal(json_string_value(json_object_get(o, "msg")), cases[i].rest);
        } else {
            assert_true(json_is_integer(c));
            assert_int_equal(json_integer_value(c), cases[i].conn);
            assert_string_equal(json_string_value(json_object_get(o, "msg")), cases[i].rest);
        }
        json_decref(o);
    }
}

static void test_json_escapes(void **st)
{
    (void)st;
    const char m[] = "a\"b\\c\nd\re\tf\001g\037h\177i/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_string_equal(line(HD_LOG_JSON, HD_LOG_INFO, m, sizeof m - 1, 4096),
                        "{\"ts\":\"2026-11-22T11:40:01.123Z\",\"level\":\"info\","
                        "\"msg\":\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\\u007fi/"
                        "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}");
    /* A NUL byte inside the message (a length, not a C string). */
    const char nul[] = "x\0y";
    json_t *o = json_line(nul, 3, 4096);
    size_t l = json_string_length(json_object_get(o, "msg"));
    assert_int_equal(l, 3);
    assert_memory_equal(json_string_value(json_object_get(o, "msg")), nul, 3);
    json_decref(o);
}

static void test_json_not_utf8(void **st)
{
    (void)st;
    /* A lone continuation byte, a truncated sequence, an overlong, a
     * surrogate, above U+10FFFF: each byte that is not part of a
     * well-formed character becomes U+FFFD. */
    const char m[] = "a\x80" "b\xe2\x82" "c\xc0\xaf" "d\xed\xa0\x80" "e\xf4\x90\x80\x80" "f\xff";
    json_t *o = json_line(m, sizeof m - 1, 4096);
    const char *s = json_string_value(json_object_get(o, "msg"));
#define R "\xef\xbf\xbd"
    assert_string_equal(s, "a" R "b" R R "c" R R "d" R R R "e" R R R R "f" R);
#undef R
    json_decref(o);
}

static void test_json_cut(void **st)
{
    (void)st;
    /* Messages of escapes and multi-byte characters cut at every size of
     * line: always a whole JSON object, its msg a prefix of the full one. */
    char m[600];
    size_t n = 0;
    static const char *const parts[] = {"conn 9: ", "\xe2\x82\xac", "\"", "\001", "ab", "\xff"};
    while (n + 8 < sizeof m)
        for (size_t i = n ? 1 : 0; i < 6 && n + 8 < sizeof m; i++) {
            size_t l = strlen(parts[i]);
            memcpy(m + n, parts[i], l);
            n += l;
        }
    json_t *whole = json_line(m, n, 16000);
    const char *full = json_string_value(json_object_get(whole, "msg"));
    for (size_t cap = 128; cap < 1200; cap++) {
        json_t *o = json_line(m, n, cap);
        const char *s = json_string_value(json_object_get(o, "msg"));
        assert_int_equal(strncmp(s, full, strlen(s)), 0);
        assert_int_equal(json_integer_value(json_object_get(o, "conn")), 9);
        json_decref(o);
    }
    json_decref(whole);
}

static void test_parse(void **st)
{
    (void)st;
    assert_int_equal(hd_log_parse_format("text"), HD_LOG_TEXT);
    assert_int_equal(hd_log_parse_format("json"), HD_LOG_JSON);
    assert_int_equal(hd_log_parse_format("JSON"), -1);
    assert_int_equal(hd_log_parse_format(""), -1);
    assert_int_equal(hd_log_parse_level("warn"), HD_LOG_WARN);
    assert_int_equal(hd_log_parse_level("loud"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_json_conn_prefix),
        cmocka_unit_test(test_json_escapes),
        cmocka_unit_test(test_json_not_utf8),
        cmocka_unit_test(test_json_cut),
        cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
