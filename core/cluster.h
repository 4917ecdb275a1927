/* The cluster: nodes joined by Redis (hiredis's async API on the loop).
 *
 * Fan-out: one Redis channel per topic, "herald:t:{<topic>}" (hash-tagged
 * so names survive a move to Redis Cluster). A node SUBSCRIBEs while it has
 * local subscribers of a topic (a topic observer of the engine) and
 * UNSUBSCRIBEs after the last; commands of one loop turn go out as one
 * batch. Every publish made on this node (a publish observer) becomes one
 * PUBLISH of "h1 <origin node> <event length>\n<event><the Phoenix message
 * text>" (the event for coalescing), or for a binary publish of
 * "b1 <origin node> <event length>\n<event><the V2 binary broadcast: 2,
 * len(topic), len(event), topic, event, the bytes>" (Redis is binary-safe);
 * a node drops its own messages (no echo) and delivers the others through
 * hd_publish_local, framing each once (as a text or a binary WebSocket
 * frame), if it is a Phoenix message (h1) or broadcast (b1) of the
 * channel's topic; anything else counts as bad.
 *
 * Shards: with several Redis URLs a topic lives on one of them, chosen by
 * a jump consistent hash of FNV-1a 64 of its name (Centrifugo's choice).
 *
 * History: a topic with history keeps its stream in Redis, and its
 * messages go out through it (one EVALSHA each) to every node, the origin
 * included; a join of such a topic waits for a read of it
 * (hd_cluster_recover). See "history across nodes" in cluster.c.
 *
 * Each shard has two connections, one for commands and one subscribed.
 * The link is up when both are connected (AUTH and SELECT done) and Redis
 * has confirmed the SUBSCRIBE of every local topic. Redis going away never touches local
 * delivery: publishes wait in a bounded queue (cluster.queue_max) and what
 * overflows, or was in flight on a broken link, is counted lost. The
 * links reconnect with jittered exponential backoff; an idle subscribed
 * link is probed (a PUBLISH to the node's own channel that must come
 * back), so a silently dead one is noticed. The loop never waits for
 * Redis. */
#ifndef HD_CLUSTER_H
#define HD_CLUSTER_H

#include "buf.h"
#include "config.h"
#include "publish.h"
#include "stats.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct hd_shard;
struct hread;

typedef struct hd_cluster_stats {
    uint64_t reconnects;          /* links that went down and were set up again */
    uint64_t out;                 /* PUBLISHes sent */
    uint64_t in;                  /* messages from other nodes delivered here */
    uint64_t lost;                /* cross-node publishes dropped (queue full, broken link) */
    uint64_t bad;                 /* messages from Redis that could not be read */
    uint64_t stale;               /* own presence entries found left behind in Redis, dropped */
    uint64_t pres_deferred;       /* presence changes not sent (too much in flight): resynced */
    uint64_t attempts;            /* connects started (each shard's pair counts once) */
    uint64_t history_reads;       /* history reads sent (one serves every join waiting) */
} hd_cluster_stats;

typedef struct hd_cluster {
    uv_loop_t *loop;
    const hd_config *cfg;
    hd_engine *eng;
    const char *node;             /* this node's id (borrowed) */
    struct hd_shard *shards;
    size_t nshards;
    uv_timer_t ticker;            /* every 100 ms: reconnects, probes */
    uv_idle_t sync;               /* applies the turn's (un)subscriptions in one batch */
    int closing;
    int withdrawn;                 /* hd_cluster_withdraw ran: no more heartbeats */
    uint64_t last_beat;           /* loop time the liveness key was last set */
    char *seen[64];               /* node ids heard from (a ring): supersede once each */
    struct hread *reads;          /* topics with joins waiting for a history read */
    struct load_req *loads;       /* presence hashes being loaded (HGETALL out) */
    uint32_t load_marks;          /* the last load's mark (hd_presence_mark) */
    /* Told of a message another node sent this one (hd_cluster_to_node):
     * registered at start-up by whoever speaks it (the long polls). */
    void (*on_node_message)(void *ud, const char *msg, size_t len);
    void *node_message_ud;
    char append_sha[41], read_sha[41]; /* the history scripts' SHA-1 (EVALSHA) */
    size_t nseen;
    hd_cluster_stats cs;
} hd_cluster;

/* A history read for a join (hd_cluster_recover): what Redis holds of the
 * topic's stream, valid during the callback. */
typedef struct hd_recovery {
    int ok;                      /* Redis answered (else: no epoch, nothing known) */
    const char *epoch;           /* 16 hex digits */
    uint64_t top;                /* the stream's last offset */
    uint64_t now_ms;             /* Redis's clock, for the messages' ages */
    size_t n;                    /* entries after the lowest since asked, in order */
    const uint64_t *offsets, *times;
    hd_buf *const *frames;       /* each a Phoenix message frame with its offset */
    size_t nheld;                /* live messages that came while the read was out */
    const uint64_t *held_offsets;
    hd_buf *const *held;
} hd_recovery;

/* Called once per join with the read that serves it. */
typedef void (*hd_recover_fn)(void *ud, const hd_recovery *r);

/* Prepares c for cfg's cluster (cfg->ncluster_urls > 0) and registers its
 * observers with eng. Returns 0, HD_ECONFIG (a URL that does not parse:
 * config validation catches that first) or HD_ENOMEM. */
int hd_cluster_init(hd_cluster *c, uv_loop_t *loop, const hd_config *cfg, hd_engine *eng,
                    const char *node);
/* A join of a topic with history (policy history_size > 0) whose
 * subscription exists already: reads the stream once the topic's SUBSCRIBE
 * is confirmed (so everything after the read's top comes live), for the
 * messages after since (UINT64_MAX: none asked). Joins of a topic that
 * come while its read is out are served together by the next one. fn runs
 * once, later (r->ok 0 when the link broke, or the node stopped first).
 * Returns 0, or HD_ECLOSED (the shard's link is down) or HD_ENOMEM: fn is
 * not called then. */
int hd_cluster_recover(hd_cluster *c, const char *topic, size_t tlen, const hd_topic_policy *p,
                       uint64_t since, hd_recover_fn fn, void *ud);

/* Sends msg (len bytes, any) to the node named node, on its own channel:
 * it reaches that node's on_node_message once, if it is there and the
 * link holds. Returns 0 when sent, HD_ECLOSED when the link is down. */
int hd_cluster_to_node(hd_cluster *c, const char *node, const char *msg, size_t len);
/* Whether hd_cluster_to_node would send to node now. */
int hd_cluster_reaches(const hd_cluster *c, const char *node);

/* Starts connecting (returns at once). */
void hd_cluster_start(hd_cluster *c);
/* Withdraws this node's presence from the cluster at once (the drain's
 * presence phase): its entries leave the hashes, peers are told, its
 * liveness key goes. hd_cluster_pending() counts the commands until they
 * are answered. */
void hd_cluster_withdraw(hd_cluster *c);
/* How many nodes subscribe to the topic's channel (PUBSUB NUMSUB on its
 * shard): cb(ud, n) later, or n = -1 when the link broke meanwhile.
 * Returns 0, or -1 at once when the shard's link is down (cb is not
 * called then). */
int hd_cluster_numsub(hd_cluster *c, const char *topic, size_t tlen,
                      void (*cb)(void *ud, long long n), void *ud);
/* 1 when every shard's link is up. */
int hd_cluster_up(const hd_cluster *c);
/* Outbound messages waiting (queued or in flight). */
size_t hd_cluster_pending(const hd_cluster *c);
/* Disconnects and closes the ticker; cb gets it (its data then being
 * data). hiredis closes its own handles. */
void hd_cluster_close(hd_cluster *c, uv_close_cb cb, void *data);
/* Frees what is left (after the loop ran the close callbacks). */
void hd_cluster_free(hd_cluster *c);

/* Appends {"node":...,"shards":[{"url","up","reconnects"}],...} to out. */
void hd_cluster_status_json(const hd_cluster *c, hd_str *out);
/* Appends the cluster's Prometheus lines to out. */
void hd_cluster_metrics(const hd_cluster *c, hd_str *out);

/* The shard of a topic among n: jump consistent hash of FNV-1a 64. */
size_t hd_cluster_shard_of(const char *topic, size_t tlen, size_t n);

#endif
