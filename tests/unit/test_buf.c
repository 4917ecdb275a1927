/* tests/unit/test_buf.c: refcounted buffers and the string builder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "buf.h"

#include <stdio.h>
#include <string.h>

static void test_refcount(void **st)
{
    (void)st;
    hd_buf *b = hd_buf_copy("abc", 3);
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    assert_ptr_equal(hd_buf_ref(b), b);
    assert_int_equal(b->refs, 2);
    hd_buf_unref(b);
    assert_int_equal(b->refs, 1);
    assert_memory_equal(b->data, "abc", 3);
    hd_buf_unref(b);
    hd_buf_unref(NULL);
}

static void test_str(void **st)
{
    (void)st;
    hd_str s = HD_STR_INIT;
    for (int i = 0; i < 1000; i++) hd_str_addc(&s, 'x');
    assert_int_equal(s.len, 1000);
    hd_str_printf(&s, "%d-%s", 42, "end");
    assert_string_equal(s.p + 1000, "42-end");
    hd_str_reset(&s);
    assert_int_equal(s.len, 0);
    hd_str_add_json(&s, "a\"b\\c\n\x01\x1f\xc3\xa9", 10);
    assert_string_equal(s.p, "\"a\\\"b\\\\c\\n\\u0001\\u001f\xc3\xa9\"");
    hd_str_reset(&s);
    hd_str_add_json_or_null(&s, NULL);
    assert_string_equal(s.p, "null");
    hd_str_free(&s);
    assert_null(s.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_refcount), cmocka_unit_test(test_str)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
