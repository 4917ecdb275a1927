#include "publish.h"
#include "err.h"
#include "log.h"
#include "phx.h"

#include <string.h>

static size_t released(void *ud, const char *topic, size_t tlen, const char *event, size_t elen,
                       hd_buf *frame);

static void on_topic_create(void *data, hd_topic *tp)
{
    hd_engine *e = data;
    for (size_t i = 0; i < e->ntobs; i++)
        if (e->tobs[i].on_first) e->tobs[i].on_first(e->tobs[i].ud, tp->name, tp->len);
}

static void on_topic_free(void *data, hd_topic *tp)
{
    hd_engine *e = data;
    hd_presence_forget(&e->pres, tp);
    for (size_t i = 0; i < e->ntobs; i++)
        if (e->tobs[i].on_last) e->tobs[i].on_last(e->tobs[i].ud, tp->name, tp->len);
}

int hd_engine_init(hd_engine *e, uv_loop_t *loop, const hd_config *cfg, hd_stats *st,
                   const char *node)
{
    memset(e, 0, sizeof *e);
    e->st = st;
    int rc = hd_policy_init(&e->pol, cfg);
    if (rc) return rc;
    rc = hd_topics_init(&e->topics);
    if (rc) {
        hd_policy_free(&e->pol);
        return rc;
    }
    e->topics.pol = &e->pol;
    e->topics.st = st;
    e->topics.on_create = on_topic_create;
    e->topics.on_free = on_topic_free;
    e->topics.on_free_data = e;
    hd_presence_init(&e->pres, loop, cfg, st, &e->topics, node);
    hd_shapers_init(&e->shapers, loop, st, &e->pol, released, e);
    return 0;
}

void hd_engine_close(hd_engine *e, uv_close_cb cb, void *data)
{
    hd_shapers_close(&e->shapers);
    hd_presence_close(&e->pres, cb, data);
}

void hd_engine_free(hd_engine *e)
{
    hd_topics_free(&e->topics);
    hd_policy_free(&e->pol);
}

int hd_publish_observe(hd_engine *e, hd_publish_observer fn, void *ud)
{
    if (e->nobs >= HD_PUBLISH_MAX_OBSERVERS) return HD_ELIMIT;
    e->obs[e->nobs].fn = fn;
    e->obs[e->nobs].ud = ud;
    e->nobs++;
    return 0;
}

int hd_engine_observe_topics(hd_engine *e, const hd_topic_observer *o)
{
    if (e->ntobs >= HD_PUBLISH_MAX_OBSERVERS) return HD_ELIMIT;
    e->tobs[e->ntobs++] = *o;
    return 0;
}

/* Fans a frame out to this node's subscribers of the topic. */
static size_t fan_out(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame)
{
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (!tp) {
        e->st->publishes_no_subs++;
        return 0;
    }
    size_t n = hd_topics_publish(&e->topics, tp, frame);
    e->st->deliveries += n;
    return n;
}

static void tell(hd_engine *e, const char *topic, size_t tlen, const char *event, size_t elen,
                 const char *data_json, size_t dlen, hd_buf *frame)
{
    for (size_t i = 0; i < e->nobs; i++)
        e->obs[i].fn(e->obs[i].ud, topic, tlen, event, elen, data_json, dlen, frame);
}

/* A frame the shaper lets go: the observers (the other nodes deliver it
 * unshaped) and this node's subscribers. */
static size_t released(void *ud, const char *topic, size_t tlen, const char *event, size_t elen,
                       hd_buf *frame)
{
    hd_engine *e = ud;
    tell(e, topic, tlen, event, elen, NULL, 0, frame);
    return fan_out(e, topic, tlen, frame);
}

size_t hd_publish(hd_engine *e, const char *topic, size_t tlen, const char *event, size_t elen,
                  const char *data_json, size_t dlen)
{
    e->st->publishes++;
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (!tp && !e->nobs) { /* nobody here, nobody elsewhere to tell */
        e->st->publishes_no_subs++;
        return 0;
    }
    /* The policy of a topic with no subscriber here is computed for the
     * publish (a cluster shapes at the origin). */
    hd_topic_policy scratch;
    const hd_topic_policy *p = tp ? hd_topic_policy_of(&e->topics, tp) : &scratch;
    if (!tp) hd_policy_for(&e->pol, topic, tlen, &scratch);
    hd_buf *frame = hd_phx_msg(topic, tlen, event, elen, data_json, dlen);
    if (!frame) {
        hd_error("out of memory building a push frame");
        return 0;
    }
    if (tp) hd_policy_count(&e->pol, p, HD_TC_RECEIVED, 1);
    size_t n;
    if (hd_shaper_applies(p)) {
        n = hd_shaper_submit(&e->shapers, topic, tlen, p, event, elen, frame);
    } else {
        /* A reload may have turned shaping off: what was held goes first. */
        n = hd_shaper_release(&e->shapers, topic, tlen);
        tell(e, topic, tlen, event, elen, data_json, dlen, frame);
        n += fan_out(e, topic, tlen, frame);
    }
    hd_buf_unref(frame);
    return n;
}

size_t hd_publish_local(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame)
{
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (tp) hd_policy_count(&e->pol, hd_topic_policy_of(&e->topics, tp), HD_TC_RECEIVED, 1);
    return fan_out(e, topic, tlen, frame);
}
