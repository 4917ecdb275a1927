/* Phoenix Channels v2 over WebSocket: the handshake, frames in and out,
 * join/leave/heartbeat, and the frame a publish becomes. */
#ifndef HD_CHANNEL_H
#define HD_CHANNEL_H

#include "buf.h"
#include "topic.h"
#include "ws.h"

struct hd_conn;
struct hd_http_req;

#define HD_TOPIC_MAX_BYTES 255

typedef struct hd_ws_conn {
    hd_ws_parser parser;
    hd_sub *subs;           /* joined topics */
    uint32_t nsubs;
    char *token;            /* auth token from the Phoenix subprotocol, or NULL */
    char *identity;         /* id from authenticate, or NULL (then the conn id) */
    char *assigns;          /* assigns from authenticate as JSON, or NULL */
} hd_ws_conn;

/* Answers a request on a WebSocket mount path: 101 and the switch to
 * WebSocket, or the documented refusal. upgrade is llhttp's verdict that
 * the request asked for a protocol switch. */
void hd_channel_handshake(struct hd_conn *c, struct hd_http_req *r, int upgrade);

/* Feeds bytes read from an upgraded connection. */
void hd_channel_on_read(struct hd_conn *c, uint8_t *data, size_t len);

/* Leaves every joined topic (no frames sent). Safe on any connection. */
void hd_channel_unlink_all(struct hd_conn *c);

/* The identity authenticate gave c, or NULL. */
const char *hd_channel_identity(struct hd_conn *c);
/* c's assigns as JSON text, or NULL. */
const char *hd_channel_assigns(struct hd_conn *c);

/* Re-runs the join hook for every topic c has joined (after a reload) and
 * closes, with phx_close, the channels it now refuses. Returns how many. */
size_t hd_channel_recheck(struct hd_conn *c);

/* Frees the WebSocket state. NULL is a no-op. */
void hd_channel_free(hd_ws_conn *w);

/* Builds the frame every subscriber of a publish receives:
 *   [null,null,<topic>,"msg",{"data":<data_json>,"event":<event>}]
 * topic and event are raw strings (escaped here); data_json is already JSON.
 * Returns a new hd_buf (one reference) or NULL when out of memory. */
hd_buf *hd_channel_msg_frame(const char *topic, size_t tlen, const char *event, size_t elen,
                             const char *data_json, size_t dlen);

#endif
