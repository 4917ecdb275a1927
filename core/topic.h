/* Topic registry and fan-out.
 *
 * A topic exists while it has subscribers: created by the first join,
 * freed by the last leave. Each subscription (hd_sub) sits on two lists:
 * its topic's subscribers and its connection's joined topics (c->subs,
 * which topic.c keeps). */
#ifndef HD_TOPIC_H
#define HD_TOPIC_H

#include "buf.h"
#include "conn.h"
#include "policy.h"
#include "stats.h"

#include <stddef.h>
#include <stdint.h>

struct hd_pres;
struct hd_pres_diff;

typedef struct hd_sub {
    struct hd_sub *tprev, *tnext; /* the topic's subscribers */
    struct hd_sub *cnext;         /* the connection's joined topics */
    struct hd_topic *topic;
    hd_conn *conn;
    struct hd_pres *pres;         /* its presence entry (presence.c), NULL when untracked */
    /* One word, so that a subscription with a short ref stays a 64-byte
     * allocation: */
    uint64_t floor : 56;          /* its join's history read reached this offset: a live
                                   * message at or below it came late and is not sent */
    uint64_t has_ref : 1;         /* ref holds the client's join_ref */
    uint64_t state_due : 1;       /* presence_state waits for the topic's load */
    uint64_t joining : 1;         /* its join waits for the topic's history: nothing live yet */
    char ref[];                   /* (allocated to fit: offsetof(hd_sub, ref) + length + 1) */
} hd_sub;

/* The client's join_ref of the subscription, or NULL. */
static inline const char *hd_sub_join_ref(const hd_sub *s) { return s->has_ref ? s->ref : NULL; }

typedef struct hd_topic {
    struct hd_topic *hnext;       /* hash chain */
    hd_topic_policy policy;       /* valid when policy_gen is the policy generation */
    /* (32-bit fields beside the policy, so that a topic with a short name
     * stays a 112-byte allocation) */
    uint32_t policy_gen;          /* (the low 32 bits of the generation) */
    uint32_t id;                  /* tags queued frames: never 0, unique among the live
                                   * (wraps after 2^32 topics; a frame is queued seconds) */
    uint32_t hash;
    uint32_t nsubs;
    uint32_t len;
    struct hd_pres *pres;         /* presence entries, every node's (presence.c) */
    struct hd_pres_diff *diff;    /* the presence diff waiting to be sent, or NULL */
    hd_sub *subs;                 /* subscribers, newest first */
    uint8_t pres_loading;         /* other nodes' presence is being loaded (cluster) */
    char name[];                  /* NUL-terminated */
} hd_topic;

typedef struct hd_topics {
    hd_topic **slots;
    size_t nslots;                /* a power of two */
    size_t count;
    uint32_t next_id;
    uint64_t v1_failures;         /* publishes whose V1 copy could not be built (logged now and then) */
    hd_policy *pol;               /* borrowed; NULL: defaults */
    hd_stats *st;                 /* borrowed; may be NULL in tests */
    /* Called when a topic is created (its first subscriber joined), and
     * before one is freed (its last subscriber left: to drop pending
     * presence diffs and shaped messages). Either may be NULL. */
    void (*on_create)(void *data, hd_topic *topic);
    void (*on_free)(void *data, hd_topic *topic);
    void *on_free_data;
} hd_topics;

int hd_topics_init(hd_topics *t);
/* Frees the table. Topics must have no subscribers left. */
void hd_topics_free(hd_topics *t);

/* Returns the topic named (name, len), or NULL when it has no subscribers. */
hd_topic *hd_topics_find(hd_topics *t, const char *name, size_t len);

/* Subscribes conn (may be NULL in tests) to the topic (created if needed)
 * under join_ref (copied), linking the subscription into conn->subs.
 * Returns it, or NULL when out of memory. */
hd_sub *hd_topics_subscribe(hd_topics *t, const char *name, size_t len, hd_conn *conn,
                            const char *join_ref);
/* Unlinks sub from its topic (freeing the topic if it was the last) and
 * from its connection, and frees sub. */
void hd_topics_unsubscribe(hd_topics *t, hd_sub *sub);
/* c's subscription to the topic, or NULL. */
hd_sub *hd_topics_sub_of(const hd_conn *c, const char *name, size_t len);

/* Returns the topic's policy, resolving it (once per generation) when the
 * cached one is stale. */
const hd_topic_policy *hd_topic_policy_of(hd_topics *t, hd_topic *topic);

/* Queues frame (a Phoenix V2 text frame, one of phx.h; borrowed) on c in
 * the serializer c speaks: as it is, or once turned into V1 for a socket
 * with HD_CF_V1. Returns hd_conn_send's answer, HD_ENOMEM when the V1
 * frame could not be built. */
int hd_topics_send(hd_conn *c, hd_buf *frame);

/* Queues frame (a reference each) on every subscriber of the topic, under
 * its policy's queue limit. frame is a Phoenix V2 text frame: subscribers
 * speaking V1 share one V1 copy of it, built at the first of them. A
 * binary frame (hd_phx_broadcast_binary) skips them, counted in
 * st->dropped_binary_v1. Returns the number of connections it was
 * queued on. Connections that overflow are only marked: the writer reaps
 * them once per loop turn, so the subscriber list never changes here. */
size_t hd_topics_publish(hd_topics *t, hd_topic *topic, hd_buf *frame);
/* The same for a message of the topic's history at offset (> 0): not
 * queued on subscribers whose floor is at or past it. */
size_t hd_topics_publish_at(hd_topics *t, hd_topic *topic, hd_buf *frame, uint64_t offset);

#endif
