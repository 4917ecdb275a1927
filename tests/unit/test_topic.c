/* tests/unit/test_topic.c: the topic registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "topic.h"

#include <stdio.h>
#include <string.h>

static int freed;
static void on_free(void *d, hd_topic *t)
{
    (void)d;
    (void)t;
    freed++;
}

static void test_subscribe_unsubscribe(void **st)
{
    (void)st;
    hd_topics t;
    assert_int_equal(hd_topics_init(&t), 0);
    t.on_free = on_free;
    freed = 0;
    hd_sub *a = hd_topics_subscribe(&t, "room:1", 6, NULL, "1");
    hd_sub *b = hd_topics_subscribe(&t, "room:1", 6, NULL, NULL);
    assert_ptr_equal(a->topic, b->topic);
    assert_string_equal(a->join_ref, "1");
    hd_topic *tp = hd_topics_find(&t, "room:1", 6);
    assert_non_null(tp);
    assert_int_equal(tp->nsubs, 2);
    assert_null(hd_topics_find(&t, "room:2", 6));
    assert_null(hd_topics_find(&t, "room:", 5));
    hd_topics_unsubscribe(&t, a);
    assert_int_equal(tp->nsubs, 1);
    assert_ptr_equal(tp->subs, b);
    hd_topics_unsubscribe(&t, b);
    assert_null(hd_topics_find(&t, "room:1", 6));
    assert_int_equal(t.count, 0);
    assert_int_equal(freed, 1);
    hd_topics_free(&t);
}

static void test_growth(void **st)
{
    (void)st;
    hd_topics t;
    hd_topics_init(&t);
    enum { N = 5000 };
    static hd_sub *subs[N];
    char name[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof name, "topic:%d", i);
        subs[i] = hd_topics_subscribe(&t, name, (size_t)n, NULL, NULL);
        assert_non_null(subs[i]);
    }
    assert_int_equal(t.count, N);
    assert_true(t.nslots >= N);
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof name, "topic:%d", i);
        hd_topic *tp = hd_topics_find(&t, name, (size_t)n);
        assert_non_null(tp);
        assert_string_equal(tp->name, name);
    }
    uint64_t ids = 0;
    for (int i = 0; i < N; i++) ids += subs[i]->topic->id;
    assert_int_equal(ids, (uint64_t)N * (N + 1) / 2); /* unique ids 1..N */
    for (int i = 0; i < N; i++) hd_topics_unsubscribe(&t, subs[i]);
    assert_int_equal(t.count, 0);
    hd_topics_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_subscribe_unsubscribe),
                                       cmocka_unit_test(test_growth)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
