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
    e->loop = loop;
    e->st = st;
    int rc = hd_policy_init(&e->pol, cfg);
    if (rc) return rc;
    rc = hd_topics_init(&e->topics);
    if (rc) {
        hd_policy_free(&e->pol);
        return rc;
    }
    if (hd_history_init(&e->hist)) {
        hd_topics_free(&e->topics);
        hd_policy_free(&e->pol);
        return HD_ENOMEM;
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
    hd_history_free(&e->hist);
    hd_topics_free(&e->topics);
    hd_presence_free(&e->pres);
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

/* Fans a frame out to this node's subscribers of the topic (offset: its
 * place in the topic's history in Redis, else 0). */
static size_t fan_out(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame, uint64_t offset)
{
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (!tp) {
        e->st->publishes_no_subs++;
        return 0;
    }
    size_t n = hd_topics_publish_at(&e->topics, tp, frame, offset);
    e->st->deliveries += n;
    return n;
}

static void tell(hd_engine *e, const char *topic, size_t tlen, const char *event, size_t elen,
                 const char *data_json, size_t dlen, hd_buf *frame)
{
    for (size_t i = 0; i < e->nobs; i++)
        e->obs[i].fn(e->obs[i].ud, topic, tlen, event, elen, data_json, dlen, frame);
}

/* What goes out on a topic, shaped: into its history when it keeps one
 * (the frame then carries its offset), to the observers, and to this
 * node's subscribers. p is the topic's policy, or NULL when neither a
 * subscriber nor a history stream is here to need it. */
static size_t go_out(hd_engine *e, const char *topic, size_t tlen, const hd_topic_policy *p,
                     const char *event, size_t elen, const char *data_json, size_t dlen, hd_buf *frame)
{
    if (p && p->history_size && e->remote_append)
        return e->remote_append(e->remote_ud, topic, tlen, p, event, elen, frame);
    hd_buf *kept = p ? hd_history_append(&e->hist, topic, tlen, p, frame, uv_now(e->loop)) : NULL;
    hd_buf *f = kept ? kept : frame;
    tell(e, topic, tlen, event, elen, data_json, dlen, f);
    size_t n = fan_out(e, topic, tlen, f, 0);
    if (kept) hd_buf_unref(kept);
    return n;
}

/* The policy a publish needs: the topic's, or computed into scratch for a
 * topic with a history stream and no subscriber here; NULL otherwise. */
static const hd_topic_policy *policy_for(hd_engine *e, const char *topic, size_t tlen,
                                         hd_topic_policy *scratch)
{
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (tp) return hd_topic_policy_of(&e->topics, tp);
    if (!e->remote_append && !hd_history_find(&e->hist, topic, tlen)) return NULL;
    hd_policy_for(&e->pol, topic, tlen, scratch);
    return scratch;
}

/* A frame the shaper lets go: the observers (the other nodes deliver it
 * unshaped) and this node's subscribers. */
static size_t released(void *ud, const char *topic, size_t tlen, const char *event, size_t elen,
                       hd_buf *frame)
{
    hd_engine *e = ud;
    hd_topic_policy scratch;
    return go_out(e, topic, tlen, policy_for(e, topic, tlen, &scratch), event, elen, NULL, 0, frame);
}

size_t hd_publish(hd_engine *e, const char *topic, size_t tlen, const char *event, size_t elen,
                  const char *data_json, size_t dlen)
{
    e->st->publishes++;
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (!tp && !e->nobs && !hd_history_find(&e->hist, topic, tlen)) { /* nobody here or elsewhere */
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
        n += go_out(e, topic, tlen, p, event, elen, data_json, dlen, frame);
    }
    hd_buf_unref(frame);
    return n;
}

size_t hd_publish_binary(hd_engine *e, const char *topic, size_t tlen, const char *event,
                         size_t elen, const void *data, size_t dlen)
{
    e->st->publishes++;
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (!tp && !e->nobs) { /* nobody here or elsewhere */
        e->st->publishes_no_subs++;
        return 0;
    }
    hd_buf *frame = hd_phx_broadcast_binary(topic, tlen, event, elen, data, dlen);
    if (!frame) {
        hd_error("out of memory building a binary push frame");
        return 0;
    }
    if (tp) hd_policy_count(&e->pol, hd_topic_policy_of(&e->topics, tp), HD_TC_RECEIVED, 1);
    /* Not shaped and not kept: a history stores JSON message frames with
     * their offset written in (hd_phx_msg_at), in Redis too. The observers
     * (the other nodes) get the binary frame as it is, then this node's
     * subscribers. */
    tell(e, topic, tlen, event, elen, NULL, 0, frame);
    size_t n = fan_out(e, topic, tlen, frame, 0);
    hd_buf_unref(frame);
    return n;
}

size_t hd_publish_local(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame)
{
    return hd_publish_local_at(e, topic, tlen, frame, 0);
}

size_t hd_publish_local_at(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame,
                           uint64_t offset)
{
    hd_topic *tp = hd_topics_find(&e->topics, topic, tlen);
    if (tp) hd_policy_count(&e->pol, hd_topic_policy_of(&e->topics, tp), HD_TC_RECEIVED, 1);
    return fan_out(e, topic, tlen, frame, offset);
}
