/* tests/unit/test_publish.c: the engine's front door. hd_publish builds
 * the msg frame once (only when someone here listens), tells the
 * observers, and fans it out or hands it to the shaper; the counters add
 * up. Subscribers are connections without a socket: what they are sent
 * stays on their write queues, where the tests read it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "byhand.h"

#include "conn.h"
#include "err.h"
#include "phx.h"
#include "publish.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What one observer call saw. */
typedef struct seen {
    char topic[32], event[32], data[64];
    int no_data;   /* data_json was NULL (a shaped frame, a binary publish) */
    hd_buf *frame; /* a reference kept by the observer, or NULL */
    uint32_t refs; /* the frame's references during the call */
} seen;

typedef struct fx {
    uv_loop_t loop;
    hd_config cfg;
    hd_stats st;
    hd_engine e;
    hd_net net;
    uint32_t live_throttle_ms; /* the resolver's answer for "live:*" */
    int resolved;              /* resolver calls */
    seen obs[8];
    size_t nobs;
} fx;

/* Rule 0; its counters are pol.counts[1] ("other" is counts[0]). */
static hd_topic_rule rules[] = {{"thr:*", {.throttle_ms = 100}, HD_TP_THROTTLE}};

/* The scripts' topic hook, as the node wires it. */
static void resolve(void *ud, const char *name, size_t len, hd_topic_policy *p)
{
    fx *f = ud;
    f->resolved++;
    if (len >= 5 && memcmp(name, "live:", 5) == 0) p->throttle_ms = f->live_throttle_ms;
    if (len >= 5 && memcmp(name, "hist:", 5) == 0) p->history_size = 10;
}

static void observe(void *ud, const char *topic, size_t tlen, const char *event, size_t elen,
                    const char *data, size_t dlen, hd_buf *frame)
{
    fx *f = ud;
    assert_true(f->nobs < sizeof f->obs / sizeof *f->obs);
    seen *s = &f->obs[f->nobs++];
    snprintf(s->topic, sizeof s->topic, "%.*s", (int)tlen, topic);
    snprintf(s->event, sizeof s->event, "%.*s", (int)elen, event);
    snprintf(s->data, sizeof s->data, "%.*s", (int)dlen, data ? data : ""); /* NULL: shaped */
    s->no_data = data == NULL;
    s->refs = frame ? frame->refs : 0;
    s->frame = frame ? hd_buf_ref(frame) : NULL;
}

/* ---- connections without a socket ------------------------------------------------ */

static void conn_closed(hd_conn *c)
{
    fx *f = c->net->data;
    while (c->subs) {
        hd_presence_untrack(&f->e.pres, c->subs);
        hd_topics_unsubscribe(&f->e.topics, c->subs);
    }
}
static const hd_conn_ops conn_ops = {.on_read = byhand_read, .close = byhand_shut, .on_closed = conn_closed, .free = byhand_free};

/* An open WebSocket connection subscribed to topic. */
static hd_conn *subscriber(fx *f, const char *topic)
{
    hd_conn *c = ws_conn_by_hand(&f->net, &conn_ops);
    assert_non_null(hd_topics_subscribe(&f->e.topics, topic, strlen(topic), c, NULL));
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
    f->cfg.presence_batch_ms = 1;
    f->cfg.topic_rules = rules;
    f->cfg.ntopic_rules = 1;
    assert_int_equal(hd_engine_init(&f->e, &f->loop, &f->cfg, &f->st, "A"), 0);
    f->e.pol.resolve = resolve;
    f->e.pol.resolve_ud = f;
    assert_int_equal(hd_net_init(&f->net, &f->loop, &f->cfg, &f->st), 0);
    f->net.data = f;
    *state = f;
    return 0;
}

/* Closing the connections frees every topic (with its presence and its
 * shaper); then the handles close and nothing may be left. */
static int teardown(void **state)
{
    fx *f = *state;
    for (size_t i = 0; i < f->nobs; i++)
        hd_buf_unref(f->obs[i].frame);
    hd_net_close_all(&f->net);
    hd_engine_close(&f->e, NULL, NULL);
    hd_net_close_handles(&f->net, NULL, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->e.topics.count, 0);
    hd_engine_free(&f->e);
    hd_net_free(&f->net);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* ---- publishing and reading queues ----------------------------------------------- */

/* hd_publish of data 1 under event on a NUL-terminated topic. */
static size_t publish(fx *f, const char *topic, const char *event)
{
    return hd_publish(&f->e, topic, strlen(topic), event, strlen(event), "1", 1);
}

/* A msg frame built as hd_publish builds it (the caller unrefs it). */
static hd_buf *msg(const char *topic, const char *event)
{
    hd_buf *b = hd_phx_msg(topic, strlen(topic), event, strlen(event), "1", 1);
    assert_non_null(b);
    return b;
}

static size_t nframes(const hd_conn *c)
{
    size_t n = 0;
    for (const hd_wq_item *it = c->wq_head; it; it = it->next)
        n++;
    return n;
}

/* The events of c's queued msg frames, in order, separated by spaces. */
static void assert_events(const hd_conn *c, const char *want)
{
    char got[256] = "";
    size_t n = 0;
    for (const hd_wq_item *it = c->wq_head; it; it = it->next) {
        const hd_buf *b = it->buf;
        assert_true(b->len > 2 && b->data[1] < 126);
        json_t *a = json_loadb((const char *)b->data + 2, b->len - 2, 0, NULL);
        assert_string_equal(json_string_value(json_array_get(a, 3)), "msg");
        const char *ev = json_string_value(json_object_get(json_array_get(a, 4), "event"));
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%s", n ? " " : "", ev);
        json_decref(a);
    }
    assert_string_equal(got, want);
}

/* ---- the engine ----------------------------------------------------------------- */

static void test_engine_init(void **state)
{
    fx *f = *state;
    assert_ptr_equal(f->e.st, &f->st);
    assert_ptr_equal(f->e.topics.pol, &f->e.pol);
    assert_ptr_equal(f->e.topics.st, &f->st);
    assert_ptr_equal(f->e.pres.topics, &f->e.topics);
    assert_ptr_equal(f->e.shapers.pol, &f->e.pol);
    assert_string_equal(f->e.pres.node, "A");
    assert_int_equal(f->e.pol.gen, 1);
    assert_int_equal(f->e.nobs, 0);
}

/* A topic freed with presence entries (another node's too) and held
 * frames: the engine forgets the entries (ASan: no leak); the frames stay
 * with the topic's shaper (it is the origin's, not the subscribers') and
 * count as unheard when they go out to nobody. */
static void test_engine_frees_topic_state(void **state)
{
    fx *f = *state;
    hd_conn *c = subscriber(f, "thr:1");
    assert_int_equal(hd_presence_track(&f->e.pres, c->subs, "{\"a\":1}"), 0);
    hd_topic *tp = hd_topics_find(&f->e.topics, "thr:1", 5);
    assert_int_equal(hd_presence_add(&f->e.pres, tp, "B", "bob", "{\"phx_ref\":\"b1\"}", NULL), 0);
    publish(f, "thr:1", "m1");
    publish(f, "thr:1", "m2");
    publish(f, "thr:1", "m3");
    hd_conn_close(c);
    assert_null(hd_topics_find(&f->e.topics, "thr:1", 5));
    assert_true(hd_shaper_active(&f->e.shapers, "thr:1", 5));
    hd_shaper_release_all(&f->e.shapers);
    assert_false(hd_shaper_active(&f->e.shapers, "thr:1", 5));
    assert_int_equal(f->st.publishes, 3);
    assert_int_equal(f->st.publishes_no_subs, 2);
    assert_int_equal(f->st.deliveries, 1);
}

/* ---- hd_publish ------------------------------------------------------------------ */

/* Nobody listens here: with nobody to tell either, nothing is built (see
 * test_observers); with an observer the frame is built for it (the
 * cluster), its policy computed for the publish, nothing is queued, and
 * the publish counts as unheard. */
static void test_publish_without_subscribers(void **state)
{
    fx *f = *state;
    hd_conn *other = subscriber(f, "room:2");
    assert_int_equal(hd_publish_observe(&f->e, observe, f), 0);
    assert_int_equal(hd_publish(&f->e, "room:1", 6, "new", 3, "{\"x\":1}", 7), 0);
    assert_int_equal(f->nobs, 1);
    assert_string_equal(f->obs[0].topic, "room:1");
    assert_string_equal(f->obs[0].event, "new");
    assert_string_equal(f->obs[0].data, "{\"x\":1}");
    assert_non_null(f->obs[0].frame);
    assert_int_equal(f->obs[0].refs, 1); /* the publisher's only: queued nowhere */
    assert_int_equal(nframes(other), 0);
    assert_int_equal(f->st.publishes, 1);
    assert_int_equal(f->st.publishes_no_subs, 1);
    assert_int_equal(f->st.deliveries, 0);
    assert_int_equal(f->e.pol.counts[0][HD_TC_RECEIVED], 0);
    assert_int_equal(f->resolved, 1); /* the policy of the publish */
}

/* One frame, exact bytes, shared by every subscriber of the topic. */
static void test_publish_fans_out_one_frame(void **state)
{
    fx *f = *state;
    hd_conn *s[3] = {subscriber(f, "room:1"), subscriber(f, "room:1"), subscriber(f, "room:1")};
    hd_conn *other = subscriber(f, "room:2");
    /* Lengths bound every argument. */
    assert_int_equal(hd_publish(&f->e, "room:1zz", 6, "newzz", 3, "{\"x\":1}zz", 7), 3);
    static const char want[] = "\x81\x39[null,null,\"room:1\",\"msg\",{\"data\":{\"x\":1},"
                               "\"event\":\"new\"}]";
    hd_buf *b = s[0]->wq_head->buf;
    assert_int_equal(b->len, sizeof want - 1);
    assert_memory_equal(b->data, want, sizeof want - 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(nframes(s[i]), 1);
        assert_ptr_equal(s[i]->wq_head->buf, b);
    }
    assert_int_equal(b->refs, 3); /* the subscribers' only: the publisher let go */
    assert_int_equal(nframes(other), 0);
    assert_int_equal(f->st.publishes, 1);
    assert_int_equal(f->st.publishes_no_subs, 0);
    assert_int_equal(f->st.deliveries, 3);
    assert_int_equal(f->e.pol.counts[0][HD_TC_RECEIVED], 1);
    assert_int_equal(f->e.pol.counts[0][HD_TC_DELIVERED], 3);
    assert_int_equal(f->e.pol.counts[1][HD_TC_RECEIVED], 0);
}

/* Observers are told once per publish, in the order they registered,
 * before the fan-out, with the frame that is then queued; one may keep
 * it. At most HD_PUBLISH_MAX_OBSERVERS. */
static void test_observers(void **state)
{
    fx *f = *state;
    hd_conn *c = subscriber(f, "room:1");
    fx other = {0};
    assert_int_equal(hd_publish_observe(&f->e, observe, f), 0);
    assert_int_equal(hd_publish_observe(&f->e, observe, &other), 0);
    assert_int_equal(hd_publish(&f->e, "room:1", 6, "ev", 2, "[1,2]", 5), 1);
    assert_int_equal(f->nobs, 1);
    assert_int_equal(other.nobs, 1);
    const seen *both[] = {&f->obs[0], &other.obs[0]};
    for (int i = 0; i < 2; i++) {
        assert_string_equal(both[i]->topic, "room:1");
        assert_string_equal(both[i]->event, "ev");
        assert_string_equal(both[i]->data, "[1,2]");
        assert_ptr_equal(both[i]->frame, c->wq_head->buf);
    }
    assert_int_equal(f->obs[0].refs, 1);        /* before the fan-out: the publisher's */
    assert_int_equal(other.obs[0].refs, 2);     /* and the first observer's */
    assert_int_equal(c->wq_head->buf->refs, 3); /* the queue and both observers */
    hd_buf_unref(other.obs[0].frame);

    publish(f, "nobody", "x");
    assert_int_equal(f->nobs, 2);
    assert_non_null(f->obs[1].frame); /* built for the observers */
    assert_int_equal(other.nobs, 2);
    assert_ptr_equal(other.obs[1].frame, f->obs[1].frame);
    hd_buf_unref(other.obs[1].frame);

    assert_int_equal(hd_publish_observe(&f->e, observe, &other), 0);
    assert_int_equal(hd_publish_observe(&f->e, observe, &other), 0);
    assert_int_equal(hd_publish_observe(&f->e, observe, &other), HD_ELIMIT);
    assert_int_equal(f->e.nobs, HD_PUBLISH_MAX_OBSERVERS);
}

/* hd_publish_binary: one V2 binary broadcast frame, told to the observers
 * (data NULL, the frame binary: the cluster's b1) and then fanned out;
 * never shaped (a throttled topic delivers both at once), never kept (a
 * topic with history has none after it), skipped by V1 subscribers
 * (counted). With nobody here, the observers still get it; with nobody
 * to tell either, nothing is built. */
static void test_publish_binary(void **state)
{
    fx *f = *state;
    static const uint8_t bytes[] = {0, 0xff, '"'};
    assert_int_equal(hd_publish_binary(&f->e, "nobody", 6, "b", 1, bytes, 3), 0);
    assert_int_equal(f->st.publishes_no_subs, 1);

    hd_conn *a = subscriber(f, "thr:1"), *v1 = subscriber(f, "thr:1");
    v1->flags |= HD_CF_V1;
    assert_int_equal(hd_publish_observe(&f->e, observe, f), 0);
    assert_int_equal(hd_publish_binary(&f->e, "thr:1", 5, "b", 1, bytes, 3), 1);
    assert_int_equal(hd_publish_binary(&f->e, "thr:1", 5, "c", 1, bytes, 3), 1);
    assert_int_equal(nframes(a), 2); /* (not throttled) */
    assert_int_equal(nframes(v1), 0);
    assert_int_equal(f->st.dropped_binary_v1, 2);
    static const uint8_t want[] = {0x82, 12, 2, 5, 1, 't', 'h', 'r', ':', '1', 'b', 0, 0xff, '"'};
    const hd_buf *b = a->wq_head->buf;
    assert_int_equal(b->len, sizeof want);
    assert_memory_equal(b->data, want, sizeof want);
    assert_int_equal(f->nobs, 2);
    assert_string_equal(f->obs[0].topic, "thr:1");
    assert_string_equal(f->obs[0].event, "b");
    assert_true(f->obs[0].no_data);
    assert_ptr_equal(f->obs[0].frame, b);
    assert_int_equal(f->obs[0].refs, 1); /* told before the fan-out */
    assert_string_equal(f->obs[1].event, "c");
    assert_int_equal(f->st.shaped_received, 0);

    hd_conn *h = subscriber(f, "hist:1");
    hd_stream *hs = hd_history_open(&f->e.hist, "hist:1", 6,
                                    hd_topic_policy_of(&f->e.topics, h->subs->topic), 0);
    assert_non_null(hs); /* (as a join opens it) */
    assert_int_equal(hd_publish_binary(&f->e, "hist:1", 6, "b", 1, bytes, 3), 1);
    assert_int_equal(nframes(h), 1);
    assert_int_equal(hs->count, 0);
    assert_int_equal(hs->top, 0);
    assert_int_equal(f->nobs, 3);
    assert_int_equal(publish(f, "hist:1", "j"), 1); /* (a JSON one is kept) */
    assert_int_equal(hs->count, 1);
    assert_int_equal(f->nobs, 4);

    assert_int_equal(hd_publish_binary(&f->e, "nobody", 6, "b", 1, bytes, 3), 0);
    assert_int_equal(f->nobs, 5); /* (the other nodes may have subscribers) */
    assert_int_equal(f->obs[4].frame->data[0], 0x82);
    assert_int_equal(f->st.publishes, 6);
    assert_int_equal(f->st.publishes_no_subs, 2);
    assert_int_equal(f->st.deliveries, 4);
}

/* ---- shaping --------------------------------------------------------------------- */

/* hd_publish on a throttled topic: the first frame goes, the next is held;
 * the one frame is shared by the queues and the shaper; the observers are
 * told of each frame as it goes out (shaping is at the origin: the other
 * nodes deliver what is let go). */
static void test_publish_shapes(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "thr:1"), *b = subscriber(f, "thr:1");
    assert_int_equal(hd_publish_observe(&f->e, observe, f), 0);
    assert_int_equal(publish(f, "thr:1", "m1"), 2);
    assert_int_equal(publish(f, "thr:1", "m2"), 0);
    assert_events(a, "m1");
    assert_events(b, "m1");
    assert_int_equal(f->nobs, 1); /* m2 is held: not told yet */
    assert_int_equal(f->obs[0].frame->refs, 3); /* the observer's, two queues */
    assert_int_equal(f->st.shaped_received, 2);
    assert_int_equal(f->st.deliveries, 2);

    hd_shaper_release_all(&f->e.shapers);
    assert_events(a, "m1 m2");
    assert_events(b, "m1 m2");
    assert_int_equal(f->nobs, 2);
    assert_string_equal(f->obs[1].event, "m2");
    assert_string_equal(f->obs[1].data, ""); /* a held frame comes without its data */
    assert_int_equal(f->obs[1].frame->refs, 3); /* the observer's, two queues */
    assert_int_equal(f->st.deliveries, 4);
    assert_int_equal(f->e.pol.counts[1][HD_TC_RECEIVED], 2);
    assert_int_equal(f->e.pol.counts[1][HD_TC_DELIVERED], 4);
}

/* hd_publish_local fans out a frame built elsewhere (borrowed: the caller
 * keeps its reference), never shaped: it was shaped at its origin. */
static void test_publish_local(void **state)
{
    fx *f = *state;
    hd_conn *c = subscriber(f, "thr:1");
    hd_buf *r1 = msg("thr:1", "r1"), *r2 = msg("thr:1", "r2");
    assert_int_equal(hd_publish_local(&f->e, "thr:1", 5, r1), 1);
    assert_int_equal(hd_publish_local(&f->e, "thr:1", 5, r2), 1);
    assert_events(c, "r1 r2");
    assert_int_equal(r1->refs, 2); /* ours and the queue's */
    assert_int_equal(f->st.shaped_received, 0);
    assert_int_equal(f->st.publishes, 0); /* hd_publish's counter */
    assert_int_equal(f->st.deliveries, 2);
    assert_int_equal(f->e.pol.counts[1][HD_TC_RECEIVED], 2);
    assert_int_equal(hd_publish_local(&f->e, "none", 4, r1), 0);
    assert_int_equal(f->st.publishes_no_subs, 1);
    hd_buf_unref(r1);
    hd_buf_unref(r2);
}

/* A message shaped at another node, on a topic that still shapes here,
 * leaves this node's held frames to their window. */
static void test_unshaped_leaves_held_frames(void **state)
{
    fx *f = *state;
    hd_conn *c = subscriber(f, "thr:1");
    assert_int_equal(publish(f, "thr:1", "m1"), 1);
    assert_int_equal(publish(f, "thr:1", "m2"), 0);
    hd_buf *r1 = msg("thr:1", "r1");
    size_t n = hd_publish_local(&f->e, "thr:1", 5, r1);
    hd_buf_unref(r1);
    assert_int_equal(n, 1);
    assert_events(c, "m1 r1");
    hd_shaper_release_all(&f->e.shapers);
    assert_events(c, "m1 r1 m2");
    assert_int_equal(f->st.deliveries, 3);
}

/* A reload turns shaping off: the next publish releases what was held
 * first, in order, and each frame counts as one delivery. */
static void test_reload_turns_shaping_off(void **state)
{
    fx *f = *state;
    f->live_throttle_ms = 100;
    hd_conn *c = subscriber(f, "live:1");
    assert_int_equal(publish(f, "live:1", "m1"), 1);
    assert_int_equal(publish(f, "live:1", "m2"), 0);
    assert_int_equal(publish(f, "live:1", "m3"), 0);
    assert_int_equal(f->resolved, 1);

    f->live_throttle_ms = 0;
    assert_int_equal(publish(f, "live:1", "m4"), 0); /* no reload yet: still shaped */
    assert_int_equal(f->resolved, 1);
    hd_policy_invalidate(&f->e.pol);
    assert_int_equal(publish(f, "live:1", "m5"), 4); /* m2, m3, m4 released, then m5 */
    assert_int_equal(f->resolved, 2);
    assert_events(c, "m1 m2 m3 m4 m5");
    assert_int_equal(f->st.deliveries, nframes(c)); /* not m2 and m3 twice */
    assert_int_equal(f->st.shaped_released, 4);
    assert_int_equal(f->e.pol.counts[0][HD_TC_DELIVERED], 5);

    assert_int_equal(publish(f, "live:1", "m6"), 1);
    assert_int_equal(f->st.deliveries, 6);
    assert_int_equal(f->st.shaped_received, 4);
}

/* Subscribers on both serializers: the V2 ones share the publish's frame,
 * the V1 ones one V1 copy of it, built once. */
static void test_publish_v1_once(void **state)
{
    fx *f = *state;
    hd_conn *a = subscriber(f, "mix:1"), *b = subscriber(f, "mix:1");
    hd_conn *c = subscriber(f, "mix:1"), *d = subscriber(f, "mix:1");
    b->flags |= HD_CF_V1;
    d->flags |= HD_CF_V1;
    assert_int_equal(publish(f, "mix:1", "e"), 4);
    hd_buf *v2 = a->wq_head->buf, *v1 = b->wq_head->buf;
    assert_ptr_equal(c->wq_head->buf, v2);
    assert_ptr_equal(d->wq_head->buf, v1);
    assert_ptr_not_equal(v1, v2);
    assert_int_equal(v1->refs, 2); /* b's and d's: built for them once */
    static const char want[] =
        "{\"topic\":\"mix:1\",\"event\":\"msg\",\"payload\":{\"data\":1,\"event\":\"e\"},\"ref\":null}";
    assert_int_equal(v1->len, 2 + sizeof want - 1);
    assert_memory_equal(v1->data + 2, want, sizeof want - 1);
    assert_events(a, "e");
    assert_events(c, "e");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_engine_init),
        T(test_engine_frees_topic_state),
        T(test_publish_without_subscribers),
        T(test_publish_fans_out_one_frame),
        T(test_publish_v1_once),
        T(test_observers),
        T(test_publish_binary),
        T(test_publish_shapes),
        T(test_publish_local),
        T(test_unshaped_leaves_held_frames),
        T(test_reload_turns_shaping_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
