/* The HTTP API: a route table for /api and /admin, the auth gate, and the
 * API's own routes: publish (PushEx-compatible), topic info, presence.
 *
 * hd_api_dispatch is the HTTP layer's request callback: a request on a
 * WebSocket mount path goes to the Phoenix handshake (channel.c); any
 * other is matched against the routes. The node (server.c) registers its
 * own routes (/healthz, /readyz, /metrics, /admin/...) at start-up. */
#ifndef HD_API_H
#define HD_API_H

#include "channel.h"
#include "cluster.h"
#include "http.h"
#include "publish.h"
#include "script.h"

#include <stddef.h>

/* Most channels one publish may name. */
#define HD_API_MAX_CHANNELS 1000
#define HD_API_MAX_ROUTES 32

enum {
    HD_ROUTE_GET = 1 << 0,       /* GET and HEAD */
    HD_ROUTE_POST = 1 << 1,
    HD_ROUTE_PREFIX = 1 << 2,    /* path is a prefix; the rest must be non-empty */
    HD_ROUTE_AUTH = 1 << 3,      /* the api_auth hook or the token rule applies */
    HD_ROUTE_NODE = 1 << 4,      /* served on the admin listener too */
    HD_ROUTE_PRIVATE = 1 << 5,   /* with an admin listener, served only there */
};

/* Answers r on c. */
typedef void (*hd_route_fn)(void *ud, hd_conn *c, hd_http_req *r);

typedef struct hd_route {
    const char *path;            /* static */
    unsigned flags;              /* HD_ROUTE_* */
    hd_route_fn fn;
    void *ud;
} hd_route;

typedef struct hd_api {
    const hd_config *cfg;
    hd_stats *st;
    hd_engine *eng;
    hd_scripts *sc;
    hd_channel_ctx *ch;          /* the WebSocket mounts' handshake */
    hd_cluster *cluster;         /* "listening" cluster-wide; NULL: this node's view */
    hd_net *net;                 /* finds a connection again after a deferred answer */
    hd_route routes[HD_API_MAX_ROUTES];
    size_t nroutes;
} hd_api;

/* Prepares api with its own routes (/api/push, /api/topics/, /api/presence/). */
void hd_api_init(hd_api *api, const hd_config *cfg, hd_stats *st, hd_engine *eng,
                 hd_scripts *sc, hd_channel_ctx *ch);
/* Adds a route (at start-up). Returns 0 or HD_ELIMIT. */
int hd_api_route(hd_api *api, const char *path, unsigned flags, hd_route_fn fn, void *ud);
/* The HTTP request callback (hd_http_request_fn; ud is the hd_api). */
void hd_api_dispatch(void *ud, hd_conn *c, hd_http_req *r, int upgrade);

/* Answers body (JSON) with status, or 500 when body ran out of memory. */
void hd_api_respond_json(hd_conn *c, hd_http_req *r, int status, const hd_str *body);

/* Publishes like POST /api/push does for one topic: the publish hooks
 * (when scripts define any) may change the event and data or drop the
 * message (then 0); then hd_publish. Returns local deliveries. */
size_t hd_api_publish(hd_api *api, const char *topic, size_t tlen, const char *event,
                      size_t elen, const char *data_json, size_t dlen);

#endif
