/* The engine's front door: every publish, whatever its source (the HTTP
 * API, herald.publish, a shaper release, a message from another node),
 * goes through here. Split by reach, as redis does:
 *
 *   hd_publish         the origin of a message: builds the frame once,
 *                      shapes it (throttle, debounce, coalesce: once, at
 *                      the origin), tells the observers (the cluster,
 *                      history) of what goes out, fans it out here;
 *   hd_publish_local   this node only: fan-out of a frame already built
 *                      and shaped (messages from another node).
 *
 * hd_engine bundles the engine's modules: policy, topics, presence,
 * shaping, and the publish observers. Each keeps its own struct; upper
 * layers pass &e->topics etc. to the module they use. */
#ifndef HD_PUBLISH_H
#define HD_PUBLISH_H

#include "buf.h"
#include "history.h"
#include "policy.h"
#include "presence.h"
#include "shaper.h"
#include "stats.h"
#include "topic.h"

#include <uv.h>

#define HD_PUBLISH_MAX_OBSERVERS 4

/* Told of every message this node publishes, as it goes out (after
 * shaping), before the local fan-out. The observer takes a reference of
 * frame if it keeps it. data_json is NULL (dlen 0) for a frame a shaper
 * held, and for a binary publish (hd_publish_binary): frame is then a V2
 * binary broadcast in a WebSocket binary frame (frame->data[0] == 0x82,
 * the only kind of publish whose frame is not text), the data in it. */
typedef void (*hd_publish_observer)(void *ud, const char *topic, size_t tlen, const char *event,
                                    size_t elen, const char *data_json, size_t dlen,
                                    hd_buf *frame);

/* Told when a topic gets its first subscriber on this node, and when it
 * loses its last (the cluster subscribes to what this node delivers). */
typedef struct hd_topic_observer {
    void (*on_first)(void *ud, const char *topic, size_t tlen);
    void (*on_last)(void *ud, const char *topic, size_t tlen);
    void *ud;
} hd_topic_observer;

typedef struct hd_engine {
    uv_loop_t *loop;
    hd_stats *st;
    hd_policy pol;
    hd_topics topics;
    hd_presence pres;
    hd_shapers shapers;
    hd_history hist;
    /* In a cluster, a message of a topic with history goes here instead:
     * its offset comes from the stream in Redis, and it is delivered when
     * it comes back (cluster.c). */
    size_t (*remote_append)(void *ud, const char *topic, size_t tlen, const hd_topic_policy *p,
                            const char *event, size_t elen, hd_buf *frame);
    void *remote_ud;
    struct {
        hd_publish_observer fn;
        void *ud;
    } obs[HD_PUBLISH_MAX_OBSERVERS];
    size_t nobs;
    hd_topic_observer tobs[HD_PUBLISH_MAX_OBSERVERS];
    size_t ntobs;
} hd_engine;

/* Prepares the engine on loop. node is this node's id (borrowed). Returns
 * 0 or HD_ENOMEM (nothing to free then). */
int hd_engine_init(hd_engine *e, uv_loop_t *loop, const hd_config *cfg, hd_stats *st,
                   const char *node);
/* Closes the engine's handles (the presence timer; cb gets it, its data
 * then being data). */
void hd_engine_close(hd_engine *e, uv_close_cb cb, void *data);
/* Frees what is left; every topic must be gone. */
void hd_engine_free(hd_engine *e);

/* Registers an observer (at start-up). Returns 0 or HD_ELIMIT. */
int hd_publish_observe(hd_engine *e, hd_publish_observer fn, void *ud);
/* Registers a topic observer (at start-up; copied). Returns 0 or HD_ELIMIT. */
int hd_engine_observe_topics(hd_engine *e, const hd_topic_observer *o);

/* Publishes data (JSON text) under event to one topic as its origin: the
 * topic's shaper when its policy shapes, which lets frames go later;
 * every frame let go is told to the observers, then fanned out here.
 * Publish hooks are not run here (the callers that have them run them
 * first). Returns the number of local connections the frame was queued on
 * now (0 when held by a shaper). */
size_t hd_publish(hd_engine *e, const char *topic, size_t tlen, const char *event, size_t elen,
                  const char *data_json, size_t dlen);

/* Publishes bytes (data, dlen; copied) under event to one topic as its
 * origin, as a V2 binary broadcast (hd_phx_broadcast_binary; V1
 * subscribers do not get it: hd_topics_publish): told to the observers
 * (the other nodes, with data_json NULL), then fanned out here. Not
 * shaped and not kept in a history, even where the topic's policy says
 * so: those hold JSON messages. topic and event at most HD_PHX_BIN_MAX
 * bytes. Returns the local connections it was queued on. */
size_t hd_publish_binary(hd_engine *e, const char *topic, size_t tlen, const char *event,
                         size_t elen, const void *data, size_t dlen);

/* Fans a built frame (borrowed) out to this node's subscribers, unshaped:
 * a message of another node, shaped at its origin. Returns the
 * connections it was queued on. */
size_t hd_publish_local(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame);
/* The same for a message of a topic with history in Redis at offset (> 0):
 * a subscriber whose join's read reached it already does not get it. */
size_t hd_publish_local_at(hd_engine *e, const char *topic, size_t tlen, hd_buf *frame,
                           uint64_t offset);

#endif
