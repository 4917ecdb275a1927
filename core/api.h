/* The HTTP API: publish (PushEx-compatible), topic info, health,
 * readiness and metrics. */
#ifndef HD_API_H
#define HD_API_H

#include <stddef.h>

struct hd_conn;
struct hd_http_req;
struct hd_server;

/* Most channels one publish may name. */
#define HD_API_MAX_CHANNELS 1000

/* Answers a complete HTTP request that is not a WebSocket handshake. */
void hd_api_handle(struct hd_conn *c, struct hd_http_req *r);

/* Publishes data (JSON text) under event to one topic on this node, with
 * no publish hooks. Returns the number of connections the frame was queued
 * on. Builds the frame only when the topic has subscribers. */
size_t hd_api_publish_raw(struct hd_server *srv, const char *topic, size_t tlen,
                          const char *event, size_t elen, const char *data_json, size_t dlen);

/* The same after the publish hooks (when scripts define any), which may
 * change the event and data or drop the message (then returns 0). */
size_t hd_api_publish(struct hd_server *srv, const char *topic, size_t tlen, const char *event,
                      size_t elen, const char *data_json, size_t dlen);

#endif
