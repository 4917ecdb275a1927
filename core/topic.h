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
    char *meta;                   /* presence meta as JSON (owned), NULL when untracked */
} hd_sub;

/* A topic's policy, from the topic(name) hook (merged over the defaults),
 * cached in the topic until the scripts are reloaded. The mechanisms behind
 * the knobs (presence, rate shaping, per-topic overflow) come with the
 * topic-policy work; the values are already parsed and reported. */
typedef struct hd_topic_policy {
    uint8_t tracked;              /* presence/listener tracking (default 1) */
    uint8_t presence;             /* send presence events to clients (default 0) */
    uint8_t coalesce;             /* HD_COALESCE_* (default none) */
    uint8_t on_overflow;          /* HD_OVERFLOW_* (default close) */
    uint32_t throttle_ms;         /* 0: off */
    uint32_t debounce_ms;         /* 0: off */
    uint32_t max_wait_ms;         /* 0: no cap */
    uint32_t max_queue_bytes;     /* 0: limits.send_queue_bytes */
    int32_t rule;                 /* index of the config rule that matched, -1 none */
} hd_topic_policy;

/* Per topic pattern counters (metrics), indexed by policy.rule + 1. */
enum { HD_TC_RECEIVED, HD_TC_DELIVERED, HD_TC_COALESCED, HD_TC_COUNT };

enum { HD_COALESCE_NONE, HD_COALESCE_LATEST };
enum { HD_OVERFLOW_CLOSE, HD_OVERFLOW_DROP_OLDEST };

/* The defaults: tracked, no presence events, no shaping, close on overflow. */
void hd_topic_policy_default(hd_topic_policy *p);

typedef struct hd_topic {
    struct hd_topic *hnext;       /* hash chain */
    hd_topic_policy policy;       /* valid when policy_gen is the scripts' generation */
    uint64_t policy_gen;
    uint64_t id;                  /* unique for the server's life (tags queued frames) */
    struct hd_topic *pres_next;   /* on srv->pres_pending while a diff waits */
    void *pjoins, *pleaves;       /* json_t objects of the pending diff, or NULL */
    uint8_t pres_pending;         /* on srv->pres_pending or srv->pres_flushing */
    struct hd_shaper *shaper;     /* rate shaping state, or NULL */
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
    uint64_t next_id;
    /* Called before a topic is freed (its last subscriber left), to drop
     * pending presence diffs and shaped messages. */
    void (*on_free)(void *data, hd_topic *topic);
    void *on_free_data;
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

/* Returns the topic's policy, asking the topic hook (once per reload) when
 * the cached one is stale. */
const hd_topic_policy *hd_topic_policy_of(struct hd_server *srv, hd_topic *topic);

/* Computes the policy of a topic by name (rules, then the topic hook),
 * uncached: for topics that have no subscriber here. */
void hd_topic_policy_for(struct hd_server *srv, const char *name, size_t len, hd_topic_policy *p);

/* Queues frame (a reference each) on every subscriber of the topic.
 * Returns the number of connections it was queued on. */
size_t hd_topics_publish(struct hd_server *srv, hd_topic *topic, hd_buf *frame);

#endif
