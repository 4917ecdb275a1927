/* Topic registry and fan-out.
 *
 * A topic exists while it has subscribers: created by the first join,
 * freed by the last leave. Each subscription (hd_sub) sits on two lists:
 * its topic's subscribers and its connection's joined topics. */
#ifndef HD_TOPIC_H
#define HD_TOPIC_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

struct hd_conn;
struct hd_server;

typedef struct hd_sub {
    struct hd_sub *tprev, *tnext; /* the topic's subscribers */
    struct hd_sub *cnext;         /* the connection's joined topics */
    struct hd_topic *topic;
    struct hd_conn *conn;
    char *join_ref;               /* the client's join_ref (owned), or NULL */
} hd_sub;

typedef struct hd_topic {
    struct hd_topic *hnext;       /* hash chain */
    hd_sub *subs;                 /* subscribers, newest first */
    uint32_t hash;
    uint32_t nsubs;
    uint32_t len;
    char name[];                  /* NUL-terminated */
} hd_topic;

typedef struct hd_topics {
    hd_topic **slots;
    size_t nslots;                /* a power of two */
    size_t count;
} hd_topics;

int hd_topics_init(hd_topics *t);
/* Frees the table. Topics must have no subscribers left. */
void hd_topics_free(hd_topics *t);

/* Returns the topic named (name, len), or NULL when it has no subscribers. */
hd_topic *hd_topics_find(hd_topics *t, const char *name, size_t len);

/* Subscribes conn to the topic (created if needed) under join_ref (copied).
 * Returns a new subscription the caller links into the connection's list,
 * or NULL when out of memory. */
hd_sub *hd_topics_subscribe(hd_topics *t, const char *name, size_t len, struct hd_conn *conn,
                            const char *join_ref);
/* Unlinks sub from its topic (freeing the topic if it was the last) and
 * frees sub. The caller has already removed it from the connection's list. */
void hd_topics_unsubscribe(hd_topics *t, hd_sub *sub);

/* Queues frame (a reference each) on every subscriber of the topic.
 * Returns the number of connections it was queued on. */
size_t hd_topics_publish(struct hd_server *srv, hd_topic *topic, hd_buf *frame);

#endif
