#include "publish.h"
#include "err.h"
#include "log.h"
#include "phx.h"

#include <string.h>

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
    hd_shaper_forget(&e->shapers, tp);
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
    hd_shapers_init(&e->shapers, loop, st, &e->topics);
    return 0;
}

void hd_engine_close(hd_engine *e, uv_close_cb cb, void *data)
{
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

size_t hd_publish(hd_engine *e, const char *topic, size_t tlen, const char *event, size_t elen,
                  const char *data_json, size_t dlen)
{
    e->st->publishes++;
    hd_buf *frame = NULL;
    if (hd_topics_find(&e->topics, topic, tlen)) {
        frame = hd_phx_msg(topic, tlen, event, elen, data_json, dlen);
        if (!frame) {
            hd_error("out of memory building a push frame");
            return 0;
        }
    }
    for (size_t i = 0; i < e->nobs; i++)
        e->obs[i].fn(e->obs[i].ud, topic, tlen, event, elen, data_json, dlen, frame);
    size_t n = 0;
    if (frame) n = hd_publish_local(e, topic, tlen, event, elen, frame);
    else e->st->publishes_no_subs++;
    hd_buf_unref(frame);
    return n;
}

static size_t deliver(hd_engine *e, const char *topic, size_t tlen, const char *event,
                      size_t elen, hd_buf *frame, int shape)
{
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (!tp) {
        e->st->publishes_no_subs++;
        return 0;
    }
    const hd_topic_policy *p = hd_topic_policy_of(&e->topics, tp);
    hd_policy_count(&e->pol, p, HD_TC_RECEIVED, 1);
    size_t held = 0, n;
    if (shape && hd_shaper_applies(p)) {
        n = hd_shaper_submit(&e->shapers, tp, p, event, elen, frame);
    } else {
        /* A reload may have turned shaping off: what was held goes first
         * (the shaper counts its own deliveries). A message shaped at
         * another node leaves what a still-shaping topic holds to its
         * window. */
        held = tp->shaper && !hd_shaper_applies(p) ? hd_shaper_release(&e->shapers, tp) : 0;
        n = hd_topics_publish(&e->topics, tp, frame);
    }
    e->st->deliveries += n;
    return held + n;
}

size_t hd_publish_local(hd_engine *e, const char *topic, size_t tlen, const char *event,
                        size_t elen, hd_buf *frame)
{
    return deliver(e, topic, tlen, event, elen, frame, 1);
}

size_t hd_publish_local_unshaped(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame)
{
    return deliver(e, topic, tlen, "", 0, frame, 0);
}
