/* tests/unit/test_buf.c: refcounted buffers and the string builder. JSON
 * string escaping is checked on fixed cases and by decoding its output with
 * jansson, an independent parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "buf.h"
#include "err.h"
#include "util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

static void test_refcount(void **st)
{
    (void)st;
    hd_buf *b = hd_buf_copy("abc", 3);
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    assert_int_equal(b->len, 3);
    assert_ptr_equal(hd_buf_ref(b), b);
    assert_ptr_equal(hd_buf_ref(b), b);
    assert_int_equal(b->refs, 3);
    hd_buf_unref(b);
    hd_buf_unref(b);
    assert_int_equal(b->refs, 1);
    assert_memory_equal(b->data, "abc", 3);
    hd_buf_unref(b); /* freed here: ASan/valgrind see a leak or double free */
    hd_buf_unref(NULL);

    hd_buf *e = hd_buf_copy(NULL, 0);
    assert_non_null(e);
    assert_int_equal(e->len, 0);
    hd_buf_unref(e);
    hd_buf *n = hd_buf_new(100000);
    assert_non_null(n);
    assert_int_equal(n->len, 100000);
    assert_int_equal(n->refs, 1);
    memset(n->data, 7, n->len); /* all of it is writable */
    hd_buf_unref(n);
    /* Lengths beyond 32 bits are refused, not truncated. */
    assert_null(hd_buf_new((size_t)UINT32_MAX + 1));
}

static void test_str(void **st)
{
    (void)st;
    hd_str s = HD_STR_INIT;
    assert_null(s.p);
    assert_int_equal(hd_str_add(&s, "", 0), 0);
    assert_non_null(s.p);
    assert_string_equal(s.p, "");
    for (int i = 0; i < 1000; i++) assert_int_equal(hd_str_addc(&s, 'x'), 0);
    assert_int_equal(s.len, 1000);
    assert_true(s.cap > s.len);
    assert_int_equal(s.p[1000], 0);
    hd_str_printf(&s, "%d-%s", 42, "end");
    assert_string_equal(s.p + 1000, "42-end");
    assert_int_equal(s.len, 1006);
    hd_str_reset(&s);
    assert_int_equal(s.len, 0);
    assert_string_equal(s.p, "");
    hd_str_adds(&s, "ab");
    hd_str_add(&s, "c\0d", 3); /* bytes, NUL included */
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.p, "abc\0d", 6);
    /* A large printf grows in one step. */
    hd_str_reset(&s);
    char big[5000];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = 0;
    hd_str_printf(&s, "<%s>", big);
    assert_int_equal(s.len, sizeof big + 1);
    assert_int_equal(s.p[0], '<');
    assert_int_equal(s.p[s.len - 1], '>');
    assert_int_equal(s.p[s.len], 0);
    assert_int_equal(s.oom, 0);
    hd_str_free(&s);
    assert_null(s.p);
    assert_int_equal(s.len, 0);
    assert_int_equal(s.cap, 0);
    hd_str_free(&s); /* twice is fine */
}

/* A format that cannot be written (here a wide character the C locale
 * cannot encode) fails and marks the string, like a failed append, so
 * that a caller checking only s.oom at the end sees it. */
static void test_printf_error(void **st)
{
    (void)st;
    hd_str s = HD_STR_INIT;
    hd_str_adds(&s, "x");
    static const wchar_t bad[] = {0xD800, 0};
    assert_int_equal(hd_str_printf(&s, "%ls", bad), HD_ENOMEM);
    assert_int_equal(s.oom, 1);
    assert_int_equal(s.len, 1);
    assert_int_equal(hd_str_adds(&s, "y"), HD_ENOMEM); /* truncated from here on */
    hd_str_free(&s);
}

static void json_of(const char *in, size_t n, const char *want)
{
    hd_str s = HD_STR_INIT;
    assert_int_equal(hd_str_add_json(&s, in, n), 0);
    assert_int_equal(s.len, strlen(want));
    assert_string_equal(s.p, want);
    hd_str_free(&s);
}

static void test_json_escape(void **st)
{
    (void)st;
    json_of("", 0, "\"\"");
    json_of("plain", 5, "\"plain\"");
    json_of("a\"b\\c\n\x01\x1f\xc3\xa9", 10, "\"a\\\"b\\\\c\\n\\u0001\\u001f\xc3\xa9\"");
    json_of("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
    json_of("\0", 1, "\"\\u0000\"");
    json_of("\x7f", 1, "\"\\u007f\"");                   /* DEL is escaped (as in log lines) */
    json_of("/", 1, "\"/\"");
    json_of("\xf0\x9f\x98\x80", 4, "\"\xf0\x9f\x98\x80\""); /* UTF-8 passes through */
    json_of("\"\"", 2, "\"\\\"\\\"\"");
    json_of("\\", 1, "\"\\\\\"");
    /* Every control character. */
    for (int c = 0; c < 0x20; c++) {
        char in = (char)c, want[16];
        const char *named = c == '\b' ? "\\b" : c == '\f' ? "\\f" : c == '\n' ? "\\n"
                          : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        if (named) snprintf(want, sizeof want, "\"%s\"", named);
        else snprintf(want, sizeof want, "\"\\u%04x\"", c);
        json_of(&in, 1, want);
    }
    /* Appends to what is there. */
    hd_str s = HD_STR_INIT;
    hd_str_adds(&s, "{\"k\":");
    hd_str_add_json(&s, "v", 1);
    hd_str_addc(&s, '}');
    assert_string_equal(s.p, "{\"k\":\"v\"}");
    hd_str_reset(&s);
    hd_str_add_json_or_null(&s, NULL);
    assert_string_equal(s.p, "null");
    hd_str_reset(&s);
    hd_str_add_json_or_null(&s, "x\"");
    assert_string_equal(s.p, "\"x\\\"\"");
    hd_str_free(&s);
}

/* Random valid UTF-8 with many characters that need escapes: the output is
 * a JSON string that jansson decodes back to exactly the input. */
static void test_json_roundtrip(void **st)
{
    (void)st;
    uint64_t r = 88172645463325252ULL;
    static const char *const pieces[] = {"\"", "\\", "\n", "\x01", "\x1f", " ", "a", "\xc3\xa9",
                                         "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\x7f", "/", "\t",
                                         "\\u0000", "</script>"};
    char in[512];
    for (int k = 0; k < 20000; k++) {
        size_t n = 0;
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int parts = (int)(r % 40);
        for (int i = 0; i < parts; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            const char *p = pieces[r % (sizeof pieces / sizeof *pieces)];
            memcpy(in + n, p, strlen(p));
            n += strlen(p);
        }
        if (k % 7 == 0 && n < sizeof in) in[n++] = 0; /* embedded NUL */
        hd_str s = HD_STR_INIT;
        hd_str_add_json(&s, in, n);
        json_error_t e;
        json_t *v = json_loadb(s.p, s.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
        if (!v) fail_msg("jansson refused %s: %s", s.p, e.text);
        assert_true(json_is_string(v));
        assert_int_equal(json_string_length(v), n);
        assert_memory_equal(json_string_value(v), in, n);
        /* Only ASCII control characters, quote and backslash are escaped:
         * the output is no longer than 6x the input plus the quotes. */
        assert_true(s.len <= 6 * n + 2);
        assert_true(hd_utf8_valid((const uint8_t *)s.p, s.len));
        json_decref(v);
        hd_str_free(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_str),
        cmocka_unit_test(test_printf_error),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_json_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
