/* tests/unit/test_shaper.c: throttle, debounce, max_wait and coalescing
 * with a fake clock. The shaper's timers are real libuv timers that never
 * get to fire (the loop only runs at teardown, to close them): a test
 * reads the delay a shaper asked for (the loop's clock stands still) and
 * ends a window by calling the static on_timer, which is why this file
 * includes shaper.c. Frames are labelled buffers; connections without a
 * socket keep what they were sent on their write queues. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "byhand.h"

#include "../../core/shaper.c"
#include "topic.h"

#include "conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx {
    uv_loop_t loop;
    hd_config cfg;
    hd_stats st;
    hd_policy pol;
    hd_topics topics;
    hd_shapers sh;
    hd_net net;
    uint64_t now; /* the fake clock (ms) */
} fx;

/* Rules 0..3; the counters of rule i are pol.counts[i + 1]. */
static hd_topic_rule rules[] = {
    {"thr:*", {.throttle_ms = 100}, HD_TP_THROTTLE},
    {"deb:*", {.debounce_ms = 50}, HD_TP_DEBOUNCE},
    {"cap:*", {.debounce_ms = 50, .max_wait_ms = 80}, HD_TP_DEBOUNCE | HD_TP_MAX_WAIT},
    {"co:*", {.throttle_ms = 100, .coalesce = HD_COALESCE_LATEST}, HD_TP_THROTTLE | HD_TP_COALESCE},
};

static uint64_t fake_now(hd_shapers *sh)
{
    return ((fx *)((char *)sh - offsetof(fx, sh)))->now;
}

/* The release callback, as the engine's: this node's subscribers. */
static size_t fan(void *ud, const char *topic, size_t tlen, const char *event, size_t elen,
                  hd_buf *frame)
{
    (void)event, (void)elen;
    fx *f = ud;
    hd_topic *tp = hd_topics_find(&f->topics, topic, tlen);
    if (!tp) {
        f->st.publishes_no_subs++;
        return 0;
    }
    size_t n = hd_topics_publish(&f->topics, tp, frame);
    f->st.deliveries += n;
    return n;
}

/* ---- connections without a socket ------------------------------------------------ */

static void conn_closed(hd_conn *c)
{
    fx *f = c->net->data;
    while (c->subs)
        hd_topics_unsubscribe(&f->topics, c->subs);
}
static const hd_conn_ops conn_ops = {.on_read = byhand_read, .close = byhand_shut, .on_closed = conn_closed, .free = byhand_free};

/* An open WebSocket connection subscribed to topic. */
static hd_conn *subscriber(fx *f, const char *topic)
{
    hd_conn *c = ws_conn_by_hand(&f->net, &conn_ops);
    assert_non_null(hd_topics_subscribe(&f->topics, topic, strlen(topic), c, NULL));
    return c;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->cfg.max_connections = 1000;
    f->cfg.send_queue_bytes = 1 << 20;
    f->cfg.max_queued_bytes = 1 << 30;
    f->cfg.topic_rules = rules;
    f->cfg.ntopic_rules = sizeof rules / sizeof *rules;
    assert_int_equal(hd_policy_init(&f->pol, &f->cfg), 0);
    assert_int_equal(hd_topics_init(&f->topics), 0);
    f->topics.pol = &f->pol;
    f->topics.st = &f->st;
    hd_shapers_init(&f->sh, &f->loop, &f->st, &f->pol, fan, f);
    f->sh.now = fake_now;
    assert_int_equal(hd_net_init(&f->net, &f->loop, &f->cfg, &f->st), 0);
    f->net.data = f;
    *state = f;
    return 0;
}

/* Closing the connections frees the topics; the shapers end with the
 * engine (their timers close in the loop run); then nothing may be left. */
static int teardown(void **state)
{
    fx *f = *state;
    hd_net_close_all(&f->net);
    hd_shapers_close(&f->sh);
    hd_net_close_handles(&f->net, NULL, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_null(f->sh.list);
    hd_net_free(&f->net);
    hd_topics_free(&f->topics);
    hd_policy_free(&f->pol);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* ---- driving a shaper ------------------------------------------------------------ */

static hd_topic *topic(fx *f, const char *name)
{
    hd_topic *tp = hd_topics_find(&f->topics, name, strlen(name));
    assert_non_null(tp);
    return tp;
}

/* Publishes the frame "label" under event at time now, the way
 * hd_publish_local does; returns the connections it went to now. */
static size_t submit(fx *f, uint64_t now, const char *name, const char *event, const char *label)
{
    f->now = now;
    hd_topic *tp = topic(f, name);
    hd_buf *b = hd_buf_copy(label, strlen(label));
    size_t n = hd_shaper_submit(&f->sh, name, strlen(name), hd_topic_policy_of(&f->topics, tp),
                                event, strlen(event), b);
    hd_buf_unref(b);
    return n;
}

static hd_shaper *shaper(fx *f, const char *name)
{
    hd_shaper *s = find(&f->sh, name, strlen(name));
    assert_non_null(s);
    return s;
}

/* Frames the topic's shaper holds (0: none, or no shaper). */
static size_t held_of(fx *f, const char *name)
{
    hd_shaper *s = find(&f->sh, name, strlen(name));
    return s ? s->count : 0;
}

/* The delay the shaper's timer was started with (the loop's clock does
 * not move in these tests), or -1 when it is not running (or the shaper
 * ended: nothing held and no window). */
static int64_t due(fx *f, const char *name)
{
    hd_shaper *s = find(&f->sh, name, strlen(name));
    if (!s) return -1;
    return uv_is_active((uv_handle_t *)&s->timer) ? (int64_t)uv_timer_get_due_in(&s->timer) : -1;
}

/* The shaper's timer fires at time now. */
static void fire(fx *f, uint64_t now, const char *name)
{
    f->now = now;
    hd_shaper *s = shaper(f, name);
    assert_true(uv_is_active((uv_handle_t *)&s->timer));
    uv_timer_stop(&s->timer); /* as libuv does before the callback */
    on_timer(&s->timer);
}

/* c's queued frames' labels, in order, separated by spaces. */
static void assert_queue(const hd_conn *c, const char *want)
{
    char got[256] = "";
    size_t n = 0;
    for (const hd_wq_item *it = c->wq_head; it; it = it->next)
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%.*s", n ? " " : "", (int)it->buf->len,
                              (const char *)it->buf->data);
    assert_string_equal(got, want);
}

/* ---- throttle ---------------------------------------------------------------------- */

/* The first message goes at once and opens a window; later ones wait for
 * its end and go together; that release opens the next window; a window
 * that ends with nothing held closes, and the next message goes at once. */
static void test_throttle(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "thr:1"), *b = subscriber(f, "thr:1");
    assert_int_equal(submit(f, 1000, "thr:1", "e", "m1"), 2);
    assert_queue(a, "m1");
    assert_queue(b, "m1");
    assert_int_equal(due(f, "thr:1"), 100);
    assert_int_equal(submit(f, 1010, "thr:1", "e", "m2"), 0);
    assert_int_equal(submit(f, 1090, "thr:1", "e", "m3"), 0);
    assert_queue(a, "m1");
    assert_int_equal(due(f, "thr:1"), 100); /* held frames do not move the window */
    assert_int_equal(held_of(f, "thr:1"), 2);
    assert_int_equal(f->st.shaped_received, 3);
    assert_int_equal(f->st.shaped_released, 1);
    assert_int_equal(f->st.deliveries, 2); /* m1, at once */

    fire(f, 1100, "thr:1");
    assert_queue(a, "m1 m2 m3");
    assert_queue(b, "m1 m2 m3");
    assert_int_equal(held_of(f, "thr:1"), 0);
    assert_int_equal(f->st.shaped_released, 3);
    assert_int_equal(f->st.deliveries, 6);  /* and the released ones */
    assert_int_equal(due(f, "thr:1"), 100); /* the next window */
    assert_int_equal(submit(f, 1150, "thr:1", "e", "m4"), 0);

    fire(f, 1200, "thr:1");
    assert_queue(a, "m1 m2 m3 m4");
    assert_int_equal(due(f, "thr:1"), 100);
    fire(f, 1300, "thr:1"); /* nothing held: the window closes, the shaper ends */
    assert_int_equal(due(f, "thr:1"), -1);
    assert_false(hd_shaper_active(&f->sh, "thr:1", 5));
    assert_int_equal(submit(f, 5000, "thr:1", "e", "m5"), 2);
    assert_queue(b, "m1 m2 m3 m4 m5");
    assert_int_equal(due(f, "thr:1"), 100);
    assert_int_equal(f->st.shaped_received, 5);
    assert_int_equal(f->st.shaped_released, 5);
    assert_int_equal(f->st.deliveries, 10);
    assert_int_equal(f->pol.counts[1][HD_TC_DELIVERED], 10); /* 5 frames x 2, rule 0 */
}

/* coalesce = "none" keeps every frame, same event or not, in order. */
static void test_throttle_keeps_all_without_coalescing(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "thr:1");
    submit(f, 0, "thr:1", "x", "m1");
    for (const char *const *l = (const char *const[]){"m2", "m3", "m4", NULL}; *l; l++)
        assert_int_equal(submit(f, 10, "thr:1", "x", *l), 0);
    fire(f, 100, "thr:1");
    assert_queue(a, "m1 m2 m3 m4");
    assert_int_equal(f->st.shaped_coalesced, 0);
}

/* ---- debounce ---------------------------------------------------------------------- */

/* Released once the topic has been quiet for debounce_ms: each message
 * restarts the wait. */
static void test_debounce(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "deb:1");
    assert_int_equal(submit(f, 0, "deb:1", "e", "m1"), 0);
    assert_int_equal(due(f, "deb:1"), 50);
    assert_int_equal(submit(f, 30, "deb:1", "e", "m2"), 0);
    assert_int_equal(due(f, "deb:1"), 50);
    assert_int_equal(submit(f, 79, "deb:1", "e", "m3"), 0);
    assert_queue(a, "");
    fire(f, 129, "deb:1");
    assert_queue(a, "m1 m2 m3");
    assert_int_equal(due(f, "deb:1"), -1); /* debounce opens no window */
    assert_int_equal(f->st.shaped_released, 3);
    assert_int_equal(f->st.deliveries, 3);

    /* The next message waits again. */
    assert_int_equal(submit(f, 500, "deb:1", "e", "m4"), 0);
    assert_int_equal(due(f, "deb:1"), 50);
    assert_queue(a, "m1 m2 m3");
}

/* max_wait_ms caps the wait, counted from the first pending message. */
static void test_debounce_max_wait(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "cap:1");
    submit(f, 1000, "cap:1", "e", "m1");
    assert_int_equal(due(f, "cap:1"), 50);
    submit(f, 1040, "cap:1", "e", "m2");
    assert_int_equal(due(f, "cap:1"), 40); /* 1080, not 1090 */
    submit(f, 1070, "cap:1", "e", "m3");
    assert_int_equal(due(f, "cap:1"), 10);
    submit(f, 1085, "cap:1", "e", "m4"); /* past the cap already: at once */
    assert_int_equal(due(f, "cap:1"), 0);
    fire(f, 1085, "cap:1");
    assert_queue(a, "m1 m2 m3 m4");

    /* The cap counts from the new first pending message. */
    submit(f, 2000, "cap:1", "e", "m5");
    assert_int_equal(due(f, "cap:1"), 50);
    submit(f, 2060, "cap:1", "e", "m6");
    assert_int_equal(due(f, "cap:1"), 20);
}

/* ---- coalescing -------------------------------------------------------------------- */

/* "latest": of the held frames only the newest per event name is kept,
 * in the place of the first; each replacement is counted in the stats
 * and in the rule's HD_TC_COALESCED. */
static void test_coalesce_latest(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "co:1");
    assert_int_equal(submit(f, 0, "co:1", "a", "a1"), 1); /* opens the window */
    submit(f, 10, "co:1", "a", "a2");
    submit(f, 20, "co:1", "b", "b1");
    submit(f, 30, "co:1", "a", "a3");
    submit(f, 40, "co:1", "ab", "ab1"); /* another name, though "a" is its prefix */
    submit(f, 50, "co:1", "b", "b2");
    submit(f, 60, "co:1", "", "n1");
    assert_int_equal(held_of(f, "co:1"), 4);
    assert_int_equal(f->st.shaped_coalesced, 2);
    assert_int_equal(f->pol.counts[4][HD_TC_COALESCED], 2);
    assert_int_equal(f->pol.counts[0][HD_TC_COALESCED], 0);

    fire(f, 100, "co:1");
    assert_queue(a, "a1 a3 b2 ab1 n1");
    assert_int_equal(f->st.shaped_received, 7);
    assert_int_equal(f->st.shaped_released, 5);
    assert_int_equal(f->st.deliveries, 5);

    /* A release empties the held set: "a" is new again. */
    submit(f, 110, "co:1", "a", "a4");
    submit(f, 120, "co:1", "a", "a5");
    fire(f, 200, "co:1");
    assert_queue(a, "a1 a3 b2 ab1 n1 a5");
    assert_int_equal(f->st.shaped_coalesced, 3);
}

/* The frame a newer one replaced is released at once (no leak) and the
 * newer one is held with one reference. */
static void test_coalesce_drops_the_replaced_frame(void **state)
{
    fx *f = *state;
    subscriber(f, "co:1");
    submit(f, 0, "co:1", "a", "a1");
    hd_buf *old = hd_buf_copy("old", 3), *young = hd_buf_copy("new", 3);
    hd_topic *tp = topic(f, "co:1");
    const hd_topic_policy *p = hd_topic_policy_of(&f->topics, tp);
    assert_int_equal(hd_shaper_submit(&f->sh, "co:1", 4, p, "a", 1, old), 0);
    assert_int_equal(old->refs, 2);
    assert_int_equal(hd_shaper_submit(&f->sh, "co:1", 4, p, "a", 1, young), 0);
    assert_int_equal(old->refs, 1);
    assert_int_equal(young->refs, 2);
    hd_buf_unref(old);
    hd_buf_unref(young);
}

/* ---- release, drain, forget ------------------------------------------------------ */

/* hd_shaper_release: one topic's held frames now (its policy no longer
 * shapes), and the shaper ends; returns deliveries. */
static void test_release(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "thr:1"), *b = subscriber(f, "thr:1");
    submit(f, 0, "thr:1", "e", "m1");
    submit(f, 10, "thr:1", "e", "m2");
    submit(f, 20, "thr:1", "e", "m3");
    assert_int_equal(hd_shaper_release(&f->sh, "thr:1", 5), 4);
    assert_queue(a, "m1 m2 m3");
    assert_queue(b, "m1 m2 m3");
    assert_int_equal(due(f, "thr:1"), -1);
    assert_false(hd_shaper_active(&f->sh, "thr:1", 5));
    assert_int_equal(hd_shaper_release(&f->sh, "thr:1", 5), 0); /* no shaper */
    assert_int_equal(submit(f, 30, "thr:1", "e", "m4"), 2);     /* a new window */
    assert_int_equal(f->st.deliveries, 8);
}

/* The drain: every shaper's held frames go out, windows and waits end. */
static void test_release_all(void **state)
{
    fx *f = *state;
    hd_conn *t = subscriber(f, "thr:1"), *d = subscriber(f, "deb:1"), *c = subscriber(f, "co:1");
    subscriber(f, "cap:1");
    submit(f, 0, "thr:1", "e", "t1");
    submit(f, 1, "thr:1", "e", "t2");
    submit(f, 2, "deb:1", "e", "d1");
    submit(f, 3, "deb:1", "e", "d2");
    submit(f, 4, "co:1", "e", "c1");
    submit(f, 5, "cap:1", "e", "x1");
    assert_int_equal(hd_shaper_release(&f->sh, "cap:1", 5), 1); /* x1; that one ends */
    hd_shaper_release_all(&f->sh);
    assert_queue(t, "t1 t2");
    assert_queue(d, "d1 d2");
    assert_queue(c, "c1");
    /* Every shaper ended: nothing held, no window, no wait (co:1 too). */
    for (const char *const *n = (const char *const[]){"thr:1", "deb:1", "co:1", "cap:1", NULL}; *n;
         n++) {
        assert_int_equal(held_of(f, *n), 0);
        assert_int_equal(due(f, *n), -1);
        assert_false(hd_shaper_active(&f->sh, *n, strlen(*n)));
    }
    assert_int_equal(f->st.shaped_received, 6);
    assert_int_equal(f->st.shaped_released, 6);
    assert_int_equal(f->st.deliveries, 6); /* each frame to its one subscriber */
}

/* The topic is freed with frames held: they stay with its shaper (the
 * origin shapes whether or not it has subscribers: in a cluster other
 * nodes do) and go out at the window's end, unheard here (counted). */
static void test_topic_freed_keeps_held(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "thr:1");
    submit(f, 0, "thr:1", "e", "m1");
    submit(f, 10, "thr:1", "e", "m2");
    submit(f, 20, "thr:1", "e", "m3");
    hd_conn_close(a); /* its only subscriber */
    assert_null(hd_topics_find(&f->topics, "thr:1", 5));
    assert_int_equal(held_of(f, "thr:1"), 2);
    assert_int_equal(f->st.publishes_no_subs, 0);
    fire(f, 100, "thr:1");
    assert_int_equal(f->st.shaped_released, 3);
    assert_int_equal(f->st.publishes_no_subs, 2);
    fire(f, 200, "thr:1"); /* nothing held: it ends */
    assert_false(hd_shaper_active(&f->sh, "thr:1", 5));
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_throttle),        T(test_throttle_keeps_all_without_coalescing),
        T(test_debounce),        T(test_debounce_max_wait),
        T(test_coalesce_latest), T(test_coalesce_drops_the_replaced_frame),
        T(test_release),         T(test_release_all),
        T(test_topic_freed_keeps_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
