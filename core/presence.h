/* Phoenix Presence: who is on a topic, in the shapes phoenix.js expects.
 *
 * Presence is a set of entries per topic, each keyed by (node, key,
 * phx_ref) with a meta (a JSON object holding online_at, phx_ref and what
 * the join hook added). This node's entries belong to its subscriptions
 * (the key is the socket's identity, else its connection id); other nodes'
 * entries are added and removed by the cluster, and a node's entries can be
 * withdrawn at once. A user on two nodes is one key with metas from both.
 *
 * On topics whose policy has presence = true, a joining client gets
 * presence_state after its join reply, and every join, leave and meta
 * update of a batch window (presence.batch_ms) reaches the topic's
 * subscribers as ONE presence_diff frame, built once. */
#ifndef HD_PRESENCE_H
#define HD_PRESENCE_H

#include "buf.h"
#include "topic.h"

#include <uv.h>

/* One entry. text holds "<key>\0<meta>\0"; the phx_ref's bytes are found
 * inside the meta (ref_off, ref_len), else copied after it. For another
 * node's entry "<node>\0" comes next (node then points there), and last,
 * aligned, its links in the index (presence.c): this node's entries, one
 * per subscription, do not carry them. */
typedef struct hd_pres {
    struct hd_pres *prev, *next;  /* the topic's entries, newest first */
    hd_sub *sub;                  /* this node's subscription, or NULL */
    const char *node;             /* the owning node's id */
    uint32_t meta_off;            /* offset of the meta in text */
    uint32_t ref_off;             /* offset of the phx_ref's bytes in text */
    char text[];                  /* the key first */
} hd_pres;

/* A topic's joins and leaves of the current batch window. */
typedef struct hd_pres_diff {
    struct hd_pres_diff *next;    /* the pending (or flushing) list */
    hd_topic *topic;
    void *joins, *leaves;         /* json_t objects, or NULL */
} hd_pres_diff;

typedef struct hd_presence {
    uv_loop_t *loop;
    const hd_config *cfg;         /* presence.batch_ms */
    hd_stats *st;
    hd_topics *topics;
    const char *node;             /* this node's id (borrowed) */
    hd_pres_diff *pending;        /* diffs waiting for the batch timer */
    hd_pres_diff *flushing;       /* the ones being sent right now */
    uint64_t seq;                 /* phx_ref counter */
    uv_timer_t timer;             /* the batch window */
    /* Told when one of this node's entries on a topic with presence events
     * is added (joined 1) or removed (0): the cluster stores and announces
     * them. NULL: nobody. */
    void (*on_local)(void *ud, hd_topic *topic, const hd_pres *e, int joined);
    void *on_local_ud;
    int qualify_keys;             /* anonymous keys carry the node (a cluster) */
    /* Other nodes' entries by (topic, node, phx_ref): a peer's join or
     * leave finds its entry at once, not by a scan of the topic's. */
    hd_pres **idx;
    size_t idx_mask, idx_n;
} hd_presence;

/* An entry's key, meta (JSON object text) and phx_ref (*len bytes, not
 * NUL-terminated). */
const char *hd_pres_key(const hd_pres *e);
const char *hd_pres_meta(const hd_pres *e);
const char *hd_pres_ref(const hd_pres *e, size_t *len);

/* Prepares pr (initialises its timer on loop). */
void hd_presence_init(hd_presence *pr, uv_loop_t *loop, const hd_config *cfg, hd_stats *st,
                      hd_topics *topics, const char *node);
/* Closes the timer (cb gets it, its data then being data). */
void hd_presence_close(hd_presence *pr, uv_close_cb cb, void *data);
/* Frees the index (every topic forgotten already). */
void hd_presence_free(hd_presence *pr);

/* Starts tracking sub (when its topic's policy is tracked) with the extra
 * meta fields in meta_json (an object, or NULL). Records the join in the
 * pending diff when the topic sends presence events. Returns 0 or
 * HD_ENOMEM. */
int hd_presence_track(hd_presence *pr, hd_sub *sub, const char *meta_json);
/* Stops tracking sub before it is unlinked: records the leave. */
void hd_presence_untrack(hd_presence *pr, hd_sub *sub);
/* Replaces sub's meta (new phx_ref, phx_ref_prev = old): a join of the new
 * meta and a leave of the old under the same key. Returns 0, HD_ELIMIT when
 * the topic is not tracked, or HD_ENOMEM. */
int hd_presence_update(hd_presence *pr, hd_sub *sub, const char *meta_json);

/* Adds (or replaces) another node's entry (node, key, meta's phx_ref) on a
 * topic with subscribers here. meta_json is the whole meta object; it must
 * hold a string phx_ref, equal to ref unless ref is NULL (what the entry
 * was announced or stored under). Returns 0, HD_ELIMIT (topic unknown here
 * or not tracked), HD_EJSON (meta not an object with that phx_ref) or
 * HD_ENOMEM. */
int hd_presence_add(hd_presence *pr, hd_topic *topic, const char *node, const char *key,
                    const char *meta_json, const char *ref);
/* Marks another node's entry (if there) with mark, which hd_pres_mark
 * reads back (0 until marked): a load tells the entries it saw from the
 * others in one pass. */
void hd_presence_mark(hd_presence *pr, hd_topic *topic, const char *node, const char *key,
                      const char *phx_ref, uint32_t mark);
uint32_t hd_pres_mark(const hd_pres *e);
/* Removes another node's entry; records the leave. Returns 1 if found. */
int hd_presence_remove(hd_presence *pr, hd_topic *topic, const char *node, const char *key,
                       const char *phx_ref);
/* Removes every entry of node on every topic, recording the leaves (a
 * node that drained or died). Returns how many. */
size_t hd_presence_withdraw_node(hd_presence *pr, const char *node);
/* The same on one topic. */
size_t hd_presence_withdraw(hd_presence *pr, hd_topic *topic, const char *node);

/* Appends the topic's presence state {"key":{"metas":[...]},...} to out
 * ({} for an untracked or unknown topic). */
void hd_presence_state(hd_presence *pr, hd_topic *topic, hd_str *out);
/* Sends presence_state to sub's connection (after its join reply); while
 * the topic's pres_loading is set (the cluster loads the other nodes'
 * entries), it waits for hd_presence_loaded. */
void hd_presence_send_state(hd_presence *pr, hd_sub *sub);
/* The topic's load is over (or given up): the presence_state of those who
 * waited goes out now. */
void hd_presence_loaded(hd_presence *pr, hd_topic *topic);

/* Sends every pending diff now (the batch timer, and the drain). */
void hd_presence_flush(hd_presence *pr);
/* Drops a topic's pending diff and its entries (the topic is being freed). */
void hd_presence_forget(hd_presence *pr, hd_topic *topic);

/* The presence key of a connection: its identity, else its connection id,
 * qualified as "<id>@<node>" when pr->qualify_keys (in a cluster, ids are
 * unique per node only). Written to buf when it is not the identity. */
const char *hd_presence_key(const hd_presence *pr, const hd_conn *c, char *buf, size_t len);

#endif
