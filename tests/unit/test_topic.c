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
    assert_string_equal(hd_sub_join_ref(a), "1");
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

/* Subscribers leave in any order; the list stays consistent. */
static void test_subscriber_list(void **st)
{
    (void)st;
    hd_topics t;
    assert_int_equal(hd_topics_init(&t), 0);
    hd_sub *s[5];
    for (int i = 0; i < 5; i++) s[i] = hd_topics_subscribe(&t, "x", 1, NULL, NULL);
    hd_topic *tp = s[0]->topic;
    assert_int_equal(tp->nsubs, 5);
    assert_ptr_equal(tp->subs, s[4]); /* newest first */
    hd_topics_unsubscribe(&t, s[2]);  /* middle */
    hd_topics_unsubscribe(&t, s[4]);  /* head */
    hd_topics_unsubscribe(&t, s[0]);  /* tail */
    assert_int_equal(tp->nsubs, 2);
    assert_ptr_equal(tp->subs, s[3]);
    assert_ptr_equal(s[3]->tnext, s[1]);
    assert_null(s[3]->tprev);
    assert_ptr_equal(s[1]->tprev, s[3]);
    assert_null(s[1]->tnext);
    hd_topics_unsubscribe(&t, s[1]);
    hd_topics_unsubscribe(&t, s[3]);
    assert_null(hd_topics_find(&t, "x", 1));
    /* A topic made again is a new topic with a new id. */
    hd_sub *a = hd_topics_subscribe(&t, "x", 1, NULL, NULL);
    assert_int_equal(a->topic->id, 2);
    hd_topics_unsubscribe(&t, a);
    hd_topics_free(&t);
}

/* Names are byte strings: NULs, prefixes and long names are distinct. */
static void test_names(void **st)
{
    (void)st;
    hd_topics t;
    assert_int_equal(hd_topics_init(&t), 0);
    hd_sub *a = hd_topics_subscribe(&t, "a\0b", 3, NULL, NULL);
    hd_sub *b = hd_topics_subscribe(&t, "a\0c", 3, NULL, NULL);
    hd_sub *c = hd_topics_subscribe(&t, "a", 1, NULL, NULL);
    hd_sub *e = hd_topics_subscribe(&t, "", 0, NULL, NULL);
    char big[255];
    memset(big, 'q', sizeof big);
    hd_sub *g = hd_topics_subscribe(&t, big, sizeof big, NULL, "join-ref");
    assert_int_equal(t.count, 5);
    assert_ptr_not_equal(a->topic, b->topic);
    assert_ptr_equal(hd_topics_find(&t, "a\0b", 3), a->topic);
    assert_ptr_equal(hd_topics_find(&t, "a\0c", 3), b->topic);
    assert_ptr_equal(hd_topics_find(&t, "a", 1), c->topic);
    assert_ptr_equal(hd_topics_find(&t, "", 0), e->topic);
    assert_ptr_equal(hd_topics_find(&t, big, sizeof big), g->topic);
    assert_null(hd_topics_find(&t, big, sizeof big - 1));
    assert_null(hd_topics_find(&t, "a\0", 2));
    assert_int_equal(a->topic->len, 3);
    assert_memory_equal(a->topic->name, "a\0b\0", 4); /* NUL-terminated too */
    assert_string_equal(hd_sub_join_ref(g), "join-ref");
    hd_topics_unsubscribe(&t, a);
    hd_topics_unsubscribe(&t, b);
    hd_topics_unsubscribe(&t, c);
    hd_topics_unsubscribe(&t, e);
    hd_topics_unsubscribe(&t, g);
    assert_int_equal(t.count, 0);
    hd_topics_free(&t);
}

/* Removing half the topics from a grown table keeps the rest findable
 * (unlinking from the middle of hash chains). */
static void test_remove_half(void **st)
{
    (void)st;
    hd_topics t;
    hd_topics_init(&t);
    enum { N = 20000 };
    static hd_sub *subs[N];
    char name[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof name, "r:%d", i);
        subs[i] = hd_topics_subscribe(&t, name, (size_t)n, NULL, NULL);
    }
    assert_int_equal(t.count, N);
    assert_true((t.nslots & (t.nslots - 1)) == 0); /* a power of two */
    for (int i = 0; i < N; i += 2) hd_topics_unsubscribe(&t, subs[i]);
    assert_int_equal(t.count, N / 2);
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof name, "r:%d", i);
        hd_topic *tp = hd_topics_find(&t, name, (size_t)n);
        if (i % 2) assert_ptr_equal(tp, subs[i]->topic);
        else assert_null(tp);
    }
    for (int i = 1; i < N; i += 2) hd_topics_unsubscribe(&t, subs[i]);
    assert_int_equal(t.count, 0);
    hd_topics_free(&t);
}

static void test_policy_default(void **st)
{
    (void)st;
    hd_topic_policy p;
    memset(&p, 0xAB, sizeof p);
    hd_topic_policy_default(&p);
    assert_int_equal(p.tracked, 1);
    assert_int_equal(p.presence, 0);
    assert_int_equal(p.coalesce, HD_COALESCE_NONE);
    assert_int_equal(p.on_overflow, HD_OVERFLOW_CLOSE);
    assert_int_equal(p.throttle_ms, 0);
    assert_int_equal(p.debounce_ms, 0);
    assert_int_equal(p.max_wait_ms, 0);
    assert_int_equal(p.max_queue_bytes, 0);
    assert_int_equal(p.rule, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_subscribe_unsubscribe),
                                       cmocka_unit_test(test_growth),
                                       cmocka_unit_test(test_subscriber_list),
                                       cmocka_unit_test(test_names),
                                       cmocka_unit_test(test_remove_half),
                                       cmocka_unit_test(test_policy_default)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
