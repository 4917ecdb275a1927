/* History and recovery for topics whose policy keeps one (history_size >
 * 0): each topic's stream is a ring of references to the frames already
 * encoded for the fan-out (each carrying its offset), the offset of the
 * last one (top), and an epoch, random per stream. A client that rejoins
 * with since = {epoch, offset} gets every message after its offset, in
 * order, before any live one, or "recovered": false when that cannot be
 * done whole (another epoch, messages gone from the ring or expired, more
 * than recover_max missing).
 *
 * A stream is created by the first join of its topic (so a client always
 * has an epoch to come back with) and kept while the topic has a
 * subscriber here, or until history_ttl_ms after its last message or join;
 * publishes to a topic with no stream store nothing (nobody could recover
 * them). This is the single node's history: in a cluster the streams
 * live in Redis (cluster.c) and this one is off. */
#ifndef HD_HISTORY_H
#define HD_HISTORY_H

#include "buf.h"
#include "config.h"
#include "topic.h"

#include <stddef.h>
#include <stdint.h>

typedef struct hd_hist_item {
    uint64_t offset;
    uint64_t at;                 /* loop time (ms) it was published */
    hd_buf *frame;               /* one reference */
} hd_hist_item;

typedef struct hd_stream {
    struct hd_stream *hnext;     /* hash chain */
    uint64_t top;                /* offset of the last message (0: none yet) */
    uint64_t used_at;            /* loop time of the last message or join */
    uint32_t ttl_ms;             /* the policy's history_ttl_ms when last used */
    uint32_t hash, len;
    hd_hist_item *ring;
    uint32_t cap, head, count;   /* ring[head] is the oldest of count */
    char epoch[17];              /* 16 hex digits */
    char name[];                 /* NUL-terminated */
} hd_stream;

typedef struct hd_history {
    hd_stream **slots;
    size_t nslots, count;
    size_t messages, bytes;      /* kept in all rings */
    uint64_t recovered, not_recovered; /* joins with since */
    int off;                     /* history is not available (a cluster) */
} hd_history;

int hd_history_init(hd_history *h);
void hd_history_free(hd_history *h);

/* The topic's stream, or NULL. */
hd_stream *hd_history_find(hd_history *h, const char *topic, size_t tlen);
/* The stream for a join of a topic whose policy keeps history (created
 * empty when missing); NULL when history is off for it or out of memory. */
hd_stream *hd_history_open(hd_history *h, const char *topic, size_t tlen, const hd_topic_policy *p,
                           uint64_t now);

/* A message frame going out on the topic: when its stream exists and the
 * policy keeps history, returns the frame with its offset (stored in the
 * ring, one reference for the caller). NULL when the topic keeps no
 * history here, or out of memory (logged): frame goes as it is then. */
hd_buf *hd_history_append(hd_history *h, const char *topic, size_t tlen, const hd_topic_policy *p,
                          hd_buf *frame, uint64_t now);

/* Whether the messages after since can all be replayed from s: same
 * epoch, since <= top, at most p->recover_max missing, none gone. */
int hd_history_can_recover(const hd_stream *s, const hd_topic_policy *p, const char *epoch,
                           size_t elen, uint64_t since, uint64_t now);
/* Queues the messages after since on c (hd_history_can_recover said yes).
 * Returns how many. */
size_t hd_history_replay(const hd_stream *s, uint64_t since, hd_conn *c);
/* The bytes hd_history_replay(s, since, c) would queue. */
size_t hd_history_replay_bytes(const hd_stream *s, uint64_t since);

/* Drops expired messages, and streams expired with no subscriber in t.
 * Once a tick or so. */
void hd_history_sweep(hd_history *h, hd_topics *t, uint64_t now);

#endif
