/* Phoenix Channels v2 frames, encoded once into shareable WebSocket text
 * frames. Pure: no connection, no server; every function returns a new
 * hd_buf (one reference, the caller owns it) holding a whole WebSocket
 * frame (header + payload), or NULL when out of memory.
 *
 * Strings passed as (pointer, length) or NUL-terminated are raw text,
 * escaped here (bytes that are not UTF-8 become U+FFFD); a NULL join_ref or
 * ref is encoded as null. Parameters named *_json are JSON text already and
 * are copied as they are. */
#ifndef HD_PHX_H
#define HD_PHX_H

#include "buf.h"

#include <stddef.h>

/* [null,null,<topic>,"msg",{"data":<data_json>,"event":<event>}]: the
 * frame every subscriber of a publish receives. */
hd_buf *hd_phx_msg(const char *topic, size_t tlen, const char *event, size_t elen,
                   const char *data_json, size_t dlen);
/* The same message frame (one of hd_phx_msg) with its place in the
 * topic's history: {"data":...,"event":"...","offset":N}. NULL when msg is
 * not such a frame or out of memory. */
hd_buf *hd_phx_msg_at(const hd_buf *msg, uint64_t offset);

/* [<join_ref>,<ref>,<topic>,"phx_reply",{"status":<status>,"response":<response_json>}]
 * status is "ok" or "error" (not escaped). */
hd_buf *hd_phx_reply(const char *join_ref, const char *ref, const char *topic,
                     const char *status, const char *response_json);

/* The error reply {"status":"error","response":{"reason":<reason>}}. */
hd_buf *hd_phx_reply_error(const char *join_ref, const char *ref, const char *topic,
                           const char *reason);

/* [<join_ref>,<join_ref>,<topic>,"phx_close",{}]: the server closed the channel. */
hd_buf *hd_phx_close(const char *join_ref, const char *topic);

/* [<join_ref>,null,<topic>,"presence_state",<state_json>] */
hd_buf *hd_phx_presence_state(const char *join_ref, const char *topic, size_t tlen,
                              const char *state_json, size_t slen);

/* [null,null,<topic>,"presence_diff",<diff_json>] */
hd_buf *hd_phx_presence_diff(const char *topic, size_t tlen, const char *diff_json, size_t dlen);

/* The same frame in the V1 serializer: frame is one of the V2 text frames
 * above, [<join_ref>,<ref>,<topic>,<event>,<payload>], and the result is
 * {"topic":<topic>,"event":<event>,"payload":<payload>,"ref":<ref>} (V1
 * has no join_ref), its elements copied as they are. frame is borrowed;
 * NULL when it is not such a frame or out of memory. */
hd_buf *hd_phx_v1(const hd_buf *frame);

/* The V2 binary format (every length a byte: each string at most 255). */
#define HD_PHX_BIN_MAX 255

/* A broadcast in a WebSocket binary frame: 2 (its kind), len(topic),
 * len(event), topic, event, data. phoenix.js hands the data to the
 * channel as an ArrayBuffer. NULL when topic or event is longer than
 * HD_PHX_BIN_MAX or out of memory. */
hd_buf *hd_phx_broadcast_binary(const char *topic, size_t tlen, const char *event, size_t elen,
                                const void *data, size_t dlen);

/* A binary message, its fields pointing into the message (a broadcast has
 * no join_ref nor ref: NULL, 0). */
typedef struct hd_phx_bin {
    const uint8_t *join_ref, *ref, *topic, *event, *payload;
    size_t jrlen, reflen, tlen, elen, plen;
} hd_phx_bin;

/* Parses a client's binary message (p, len; borrowed): a push, 0 (its
 * kind), len(join_ref), len(ref), len(topic), len(event), join_ref, ref,
 * topic, event, payload. Returns NULL with *m filled in, or why it is not
 * one ("truncated header", "unknown kind", "topic or event empty", ...):
 * the header's lengths must fit the message, and the strings must be UTF-8
 * without NUL. */
const char *hd_phx_parse_binary(const uint8_t *p, size_t len, hd_phx_bin *m);

/* Parses a broadcast (p, len; borrowed), the payload of a frame of
 * hd_phx_broadcast_binary: 2 (its kind), len(topic), len(event), topic,
 * event, payload. Returns NULL with *m filled in, or why it is not one
 * ("truncated header", "not a broadcast (kind 2)"): the header's lengths
 * must fit the message. The strings are not checked further (they are
 * what the publisher gave, and may be empty): the caller compares the
 * topic with the one it expects. */
const char *hd_phx_parse_broadcast(const uint8_t *p, size_t len, hd_phx_bin *m);

#endif
