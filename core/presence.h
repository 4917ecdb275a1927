/* Phoenix Presence: who is on a topic, in the shapes phoenix.js expects.
 *
 * On a tracked topic every subscription carries a meta (JSON object with
 * online_at, phx_ref and what the join hook added) under its key (the
 * socket's identity, else its connection id). On topics whose policy has
 * presence = true, a joining client gets presence_state after its join
 * reply, and every join, leave and meta update of a batch window
 * (presence.batch_ms) reaches the topic's subscribers as ONE presence_diff
 * frame, built once. */
#ifndef HD_PRESENCE_H
#define HD_PRESENCE_H

#include "buf.h"
#include "topic.h"

struct hd_server;
struct hd_conn;

/* Starts tracking sub (when its topic's policy is tracked) with the extra
 * meta fields in meta_json (an object, or NULL). Records the join in the
 * pending diff when the topic sends presence events. Returns 0 or
 * HD_ENOMEM. */
int hd_presence_track(struct hd_server *srv, hd_sub *sub, const char *meta_json);
/* Stops tracking sub before it is unlinked: records the leave. */
void hd_presence_untrack(struct hd_server *srv, hd_sub *sub);
/* Replaces sub's meta (new phx_ref, phx_ref_prev = old): a join of the new
 * meta and a leave of the old under the same key. Returns 0, HD_ELIMIT when
 * the topic is not tracked, or HD_ENOMEM. */
int hd_presence_update(struct hd_server *srv, hd_sub *sub, const char *meta_json);

/* Appends the topic's presence state {"key":{"metas":[...]},...} to out
 * ({} for an untracked or unknown topic). */
void hd_presence_state(struct hd_server *srv, hd_topic *topic, hd_str *out);
/* Sends presence_state to sub's connection (after its join reply). */
void hd_presence_send_state(struct hd_server *srv, hd_sub *sub);

/* Sends every pending diff now (the batch timer, and the drain). */
void hd_presence_flush(struct hd_server *srv);
/* Drops a topic's pending diff (the topic is being freed). */
void hd_presence_forget(struct hd_server *srv, hd_topic *topic);

/* The presence key of a subscription's connection (identity or conn id). */
const char *hd_presence_key(struct hd_conn *c, char *buf, size_t len);

#endif
