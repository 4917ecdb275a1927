/* tests/unit/test_policy.c: a topic's policy is the defaults, then the
 * first matching config rule (only the fields it names), then the
 * resolver; topics cache it per generation; counters per rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "policy.h"
#include "topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A rule whose policy has every field set to a non-default value, of
 * which only the fields in set apply. */
static hd_topic_rule rule(const char *match, uint32_t set)
{
    hd_topic_rule r = {.match = (char *)match, .set = set};
    r.policy = (hd_topic_policy){.tracked = 0,
                                 .presence = 1,
                                 .coalesce = HD_COALESCE_LATEST,
                                 .on_overflow = HD_OVERFLOW_DROP_OLDEST,
                                 .throttle_ms = 11,
                                 .debounce_ms = 22,
                                 .max_wait_ms = 33,
                                 .max_queue_bytes = 44,
                                 .rule = 99};
    return r;
}

static hd_config config_of(hd_topic_rule *rules, size_t n)
{
    return (hd_config){.topic_rules = rules, .ntopic_rules = n};
}

/* hd_policy_for on a NUL-terminated name, into a policy first filled
 * with garbage (so every field must be written). */
static hd_topic_policy policy_for(hd_policy *pol, const char *name)
{
    hd_topic_policy p;
    memset(&p, 0x5A, sizeof p);
    hd_policy_for(pol, name, strlen(name), &p);
    return p;
}

static void assert_policy_equal(const hd_topic_policy *a, const hd_topic_policy *b)
{
    assert_int_equal(a->tracked, b->tracked);
    assert_int_equal(a->presence, b->presence);
    assert_int_equal(a->coalesce, b->coalesce);
    assert_int_equal(a->on_overflow, b->on_overflow);
    assert_int_equal(a->throttle_ms, b->throttle_ms);
    assert_int_equal(a->debounce_ms, b->debounce_ms);
    assert_int_equal(a->max_wait_ms, b->max_wait_ms);
    assert_int_equal(a->max_queue_bytes, b->max_queue_bytes);
    assert_int_equal(a->rule, b->rule);
}

/* The defaults, as the rule with that index (-1: none) left them. */
static hd_topic_policy from_rule(int32_t rule)
{
    hd_topic_policy d;
    hd_topic_policy_default(&d);
    d.rule = rule;
    return d;
}

static void expect_policy(hd_policy *pol, const char *name, const hd_topic_policy *want)
{
    hd_topic_policy p = policy_for(pol, name);
    assert_policy_equal(&p, want);
}

static void test_defaults(void **st)
{
    (void)st;
    hd_config cfg = config_of(NULL, 0);
    hd_policy pol;
    assert_int_equal(hd_policy_init(&pol, &cfg), 0);
    assert_int_equal(pol.gen, 1);
    assert_null(pol.resolve);
    hd_topic_policy p = policy_for(&pol, "anything"), d = from_rule(-1);
    assert_policy_equal(&p, &d);
    assert_int_equal(p.tracked, 1);
    assert_int_equal(p.rule, -1);
    hd_policy_free(&pol);
    hd_policy_free(&pol); /* twice is harmless */
}

/* Each HD_TP_* bit sets its one field and nothing else. */
static void test_rule_sets_only_its_fields(void **st)
{
    (void)st;
    const hd_topic_rule full = rule("x", 0);
    for (int bit = 0; bit < 8; bit++) {
        hd_topic_rule r = rule("room:*", 1u << bit);
        hd_config cfg = config_of(&r, 1);
        hd_policy pol;
        assert_int_equal(hd_policy_init(&pol, &cfg), 0);
        hd_topic_policy want = from_rule(0);
        switch (1u << bit) {
        case HD_TP_TRACKED:
            want.tracked = full.policy.tracked;
            break;
        case HD_TP_PRESENCE:
            want.presence = full.policy.presence;
            break;
        case HD_TP_THROTTLE:
            want.throttle_ms = full.policy.throttle_ms;
            break;
        case HD_TP_DEBOUNCE:
            want.debounce_ms = full.policy.debounce_ms;
            break;
        case HD_TP_MAX_WAIT:
            want.max_wait_ms = full.policy.max_wait_ms;
            break;
        case HD_TP_MAX_QUEUE:
            want.max_queue_bytes = full.policy.max_queue_bytes;
            break;
        case HD_TP_COALESCE:
            want.coalesce = full.policy.coalesce;
            break;
        case HD_TP_OVERFLOW:
            want.on_overflow = full.policy.on_overflow;
            break;
        default:
            fail();
        }
        expect_policy(&pol, "room:1", &want);
        /* A name the glob does not match gets the defaults. */
        want = from_rule(-1);
        expect_policy(&pol, "lobby", &want);
        hd_policy_free(&pol);
    }
}

/* The first matching rule wins, even when a later one is more specific
 * or sets other fields; rules that do not match are skipped. */
static void test_first_match_wins(void **st)
{
    (void)st;
    hd_topic_rule rules[] = {rule("feed:*", HD_TP_TRACKED), rule("room:*", HD_TP_THROTTLE),
                             rule("room:big:*", HD_TP_PRESENCE | HD_TP_DEBOUNCE),
                             rule("*", HD_TP_MAX_QUEUE)};
    rules[1].policy.throttle_ms = 100;
    hd_config cfg = config_of(rules, 4);
    hd_policy pol;
    assert_int_equal(hd_policy_init(&pol, &cfg), 0);

    hd_topic_policy want = from_rule(1);
    want.throttle_ms = 100;
    expect_policy(&pol, "room:big:1", &want);
    want = from_rule(3);
    want.max_queue_bytes = 44;
    expect_policy(&pol, "lobby", &want);

    /* The length bounds the name: "room:1" read as "room" matches only "*". */
    hd_topic_policy p;
    hd_policy_for(&pol, "room:1", 4, &p);
    assert_int_equal(p.rule, 3);
    hd_policy_free(&pol);
}

/* The resolver: what it saw, and how many times it was asked. */
typedef struct resolver {
    int calls;
    char last[64];
    hd_topic_policy seen; /* *p as it arrived */
    uint32_t throttle_ms; /* its answer: merged into *p */
    int presence;
} resolver;

static void resolve(void *ud, const char *name, size_t len, hd_topic_policy *p)
{
    resolver *r = ud;
    r->calls++;
    snprintf(r->last, sizeof r->last, "%.*s", (int)len, name);
    r->seen = *p;
    if (r->throttle_ms) p->throttle_ms = r->throttle_ms;
    if (r->presence) p->presence = 1;
}

/* Initialises pol on cfg with rs as its resolver. */
static void init_resolving(hd_policy *pol, const hd_config *cfg, resolver *rs)
{
    assert_int_equal(hd_policy_init(pol, cfg), 0);
    pol->resolve = resolve;
    pol->resolve_ud = rs;
}

/* The resolver runs after the rules, sees their result and merges over
 * it: fields it leaves alone keep the rule's values. */
static void test_resolver_after_rules(void **st)
{
    (void)st;
    hd_topic_rule r = rule("room:*", HD_TP_THROTTLE | HD_TP_TRACKED);
    hd_config cfg = config_of(&r, 1);
    resolver rs = {.presence = 1};
    hd_policy pol;
    init_resolving(&pol, &cfg, &rs);

    hd_topic_policy p;
    hd_policy_for(&pol, "room:1xyz", 6, &p);
    assert_int_equal(rs.calls, 1);
    assert_string_equal(rs.last, "room:1");
    hd_topic_policy want = from_rule(0);
    want.tracked = 0;
    want.throttle_ms = 11;
    assert_policy_equal(&rs.seen, &want); /* the rules were applied first */
    want.presence = 1;
    assert_policy_equal(&p, &want); /* then merged */

    /* It may override a rule's field, and is asked for unmatched names too. */
    rs.throttle_ms = 500;
    p = policy_for(&pol, "room:2");
    assert_int_equal(p.throttle_ms, 500);
    assert_int_equal(p.tracked, 0);
    p = policy_for(&pol, "lobby");
    assert_int_equal(rs.calls, 3);
    assert_int_equal(rs.seen.rule, -1);
    assert_int_equal(p.throttle_ms, 500);
    assert_int_equal(p.presence, 1);
    assert_int_equal(p.tracked, 1);
    hd_policy_free(&pol);
}

/* Topics cache their policy: the resolver runs once per generation per
 * topic, and a changed answer shows only after hd_policy_invalidate. */
static void test_cache_per_generation(void **st)
{
    (void)st;
    hd_config cfg = config_of(NULL, 0);
    resolver rs = {.throttle_ms = 10};
    hd_policy pol;
    init_resolving(&pol, &cfg, &rs);
    hd_topics t;
    assert_int_equal(hd_topics_init(&t), 0);
    t.pol = &pol;
    hd_sub *a = hd_topics_subscribe(&t, "a", 1, NULL, NULL);
    hd_sub *b = hd_topics_subscribe(&t, "b", 1, NULL, NULL);
    assert_int_equal(rs.calls, 0); /* resolved on first use, not on creation */

    for (int i = 0; i < 3; i++)
        assert_int_equal(hd_topic_policy_of(&t, a->topic)->throttle_ms, 10);
    assert_int_equal(rs.calls, 1);
    assert_int_equal(hd_topic_policy_of(&t, b->topic)->throttle_ms, 10);
    assert_int_equal(rs.calls, 2);

    rs.throttle_ms = 20; /* the scripts changed, but no reload yet */
    assert_int_equal(hd_topic_policy_of(&t, a->topic)->throttle_ms, 10);
    assert_int_equal(rs.calls, 2);

    hd_policy_invalidate(&pol);
    assert_int_equal(pol.gen, 2);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hd_topic_policy_of(&t, a->topic)->throttle_ms, 20);
        assert_int_equal(hd_topic_policy_of(&t, b->topic)->throttle_ms, 20);
    }
    assert_int_equal(rs.calls, 4);

    hd_policy_invalidate(&pol);
    hd_policy_invalidate(&pol); /* two reloads before the next use: one call */
    assert_int_equal(pol.gen, 4);
    hd_topic_policy_of(&t, a->topic);
    hd_topic_policy_of(&t, a->topic);
    assert_int_equal(rs.calls, 5);

    hd_topics_unsubscribe(&t, a);
    hd_topics_unsubscribe(&t, b);
    hd_topics_free(&t);
    hd_policy_free(&pol);
}

/* Counters are per rule + 1; index 0 is "other" (no rule matched). */
static void test_count(void **st)
{
    (void)st;
    hd_topic_rule rules[] = {rule("a:*", HD_TP_TRACKED), rule("b:*", HD_TP_TRACKED)};
    hd_config cfg = config_of(rules, 2);
    hd_policy pol;
    assert_int_equal(hd_policy_init(&pol, &cfg), 0);
    for (size_t i = 0; i < 3; i++)
        for (int k = 0; k < HD_TC_COUNT; k++)
            assert_int_equal(pol.counts[i][k], 0);

    hd_topic_policy pa = policy_for(&pol, "a:1"), pb = policy_for(&pol, "b:1"),
                    po = policy_for(&pol, "c:1");
    hd_policy_count(&pol, &pb, HD_TC_RECEIVED, 1);
    hd_policy_count(&pol, &pb, HD_TC_DELIVERED, 7);
    hd_policy_count(&pol, &pb, HD_TC_DELIVERED, 3);
    hd_policy_count(&pol, &pa, HD_TC_COALESCED, 2);
    hd_policy_count(&pol, &po, HD_TC_RECEIVED, 5);

    assert_int_equal(pol.counts[0][HD_TC_RECEIVED], 5);
    assert_int_equal(pol.counts[0][HD_TC_DELIVERED], 0);
    assert_int_equal(pol.counts[1][HD_TC_COALESCED], 2);
    assert_int_equal(pol.counts[1][HD_TC_RECEIVED], 0);
    assert_int_equal(pol.counts[2][HD_TC_RECEIVED], 1);
    assert_int_equal(pol.counts[2][HD_TC_DELIVERED], 10);
    assert_int_equal(pol.counts[2][HD_TC_COALESCED], 0);
    hd_policy_free(&pol);
}

/* The same through a config file: the rules as hd_config_load makes them. */
static void test_rules_from_config_file(void **st)
{
    (void)st;
    static const char text[] =
        "topics = { { match = 'public:*', tracked = false },\n"
        "           { match = 'fast:*', throttle_ms = 50, coalesce = 'latest' },\n"
        "           { match = 'fast:*', debounce_ms = 9 },\n"
        "           { match = '*:lobby', presence = true, on_overflow = 'drop_oldest' } }\n";
    char path[] = "/tmp/herald-test-policy-XXXXXX", err[512];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    hd_config cfg;
    unsetenv("HERALD_PORT");
    int rc = hd_config_load(&cfg, path, err, sizeof err);
    unlink(path);
    if (rc) fail_msg("%s", err);
    hd_policy pol;
    assert_int_equal(hd_policy_init(&pol, &cfg), 0);

    hd_topic_policy want = from_rule(0);
    want.tracked = 0;
    expect_policy(&pol, "public:lobby", &want);
    want = from_rule(1); /* not merged with rule 2, which also matches */
    want.throttle_ms = 50;
    want.coalesce = HD_COALESCE_LATEST;
    expect_policy(&pol, "fast:lobby", &want);
    want = from_rule(3);
    want.presence = 1;
    want.on_overflow = HD_OVERFLOW_DROP_OLDEST;
    expect_policy(&pol, "chat:lobby", &want);
    want = from_rule(-1);
    expect_policy(&pol, "chat:1", &want);

    hd_policy_count(&pol, &want, HD_TC_RECEIVED, 1);
    assert_int_equal(pol.counts[0][HD_TC_RECEIVED], 1); /* 4 rules + "other" */
    hd_policy_free(&pol);
    hd_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_rule_sets_only_its_fields),
        cmocka_unit_test(test_first_match_wins),
        cmocka_unit_test(test_resolver_after_rules),
        cmocka_unit_test(test_cache_per_generation),
        cmocka_unit_test(test_count),
        cmocka_unit_test(test_rules_from_config_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
