/* The node: one libuv loop, one listener, and the layers below wired
 * together at start-up (the transport, the engine, the scripts, the
 * protocols, the API), plus the lifecycle, the sweeper, reload and the
 * node's own routes (/healthz, /readyz, /metrics, /admin/...).
 *
 * Lifecycle: STARTING -> READY (listener open) -> DRAINING -> STOPPED.
 * The admin listener (admin = {...}) serves the node's routes from its own
 * socket and stays open through the drain.
 * All mutable state hangs off hd_server, so several servers can run in one
 * process (the unit tests do). */
#ifndef HD_SERVER_H
#define HD_SERVER_H

#include "api.h"
#include "channel.h"
#include "cluster.h"
#include "config.h"
#include "conn.h"
#include "drain.h"
#include "http.h"
#include "listen.h"
#include "publish.h"
#include "script.h"
#include "stats.h"

#include <uv.h>

typedef enum { HD_STARTING, HD_READY, HD_DRAINING, HD_STOPPED } hd_state;

struct hd_watch;

typedef struct hd_server {
    uv_loop_t *loop;
    const hd_config *cfg;          /* borrowed; outlives the server */
    hd_state state;
    int stopping;                  /* hd_server_stop called: closing everything */
    hd_stats st;                   /* every layer's counters */
    hd_net net;                    /* L1: connections, the writer */
    hd_engine eng;                 /* L2: topics, policy, presence, shaping, publish */
    hd_cluster cluster;            /* L2: the other nodes, over Redis (when configured) */
    int clustered;                 /* cluster is in use */
    hd_scripts sc;                 /* L3: the Lua generations */
    hd_http_ctx http;              /* L4: HTTP, every new connection's protocol */
    hd_channel_ctx ch;             /* L4: WebSocket sessions carrying Phoenix channels */
    hd_api api;                    /* L5: the routes */
    hd_drain drain;                /* L6: the drain sequence */
    hd_listener listener;          /* the public port */
    hd_listener admin;             /* the admin listener (admin = {...}), when configured */
    uv_timer_t sweeper;            /* idle and close-deadline checks */
    int port;                      /* the bound port, once listening */
    int admin_port;                /* the admin listener's, once listening */
    char node_id[64];              /* this node's id: host-pid-random */
    int handles_open;              /* server handles not yet closed */
    void (*on_stopped)(struct hd_server *);
    struct hd_watch *watches;      /* scripts.watch directory watchers */
    uv_timer_t *watch_timer;       /* debounces their events */
    /* The status feed (topic herald:status, for GET /admin): */
    uv_timer_t status_timer;       /* a push a second while the topic has subscribers */
    uint64_t status_at;            /* loop ms of the last push (0: none since the start) */
    uint64_t status_joins, status_publishes; /* the counters then */
} hd_server;

/* Prepares srv on loop with cfg and wires its layers. Returns 0 or a
 * negative error (nothing is left to free then). */
int hd_server_init(hd_server *srv, uv_loop_t *loop, const hd_config *cfg);
/* Opens the listener (last step of start-up) and turns READY. Logs the
 * address. Returns 0 or a negative libuv error (e.g. UV_EADDRINUSE). */
int hd_server_start(hd_server *srv);
/* Stops now: closes the listener and every connection (no close frames);
 * when every connection is gone, frees the scripts, closes the server's
 * handles and calls srv->on_stopped. The graceful way is hd_server_drain(),
 * which ends here. */
void hd_server_stop(hd_server *srv);
/* Starts the drain sequence (idempotent; only from READY). */
void hd_server_drain(hd_server *srv, const char *reason);
/* Reloads the scripts (and re-checks joins when reload.recheck_joins).
 * Returns 0 or HD_ECONFIG with err filled (the old scripts stay). */
int hd_server_reload(hd_server *srv, char *err, size_t errlen);
/* Frees what hd_server_init allocated; call after the loop has run the
 * close callbacks (on_stopped). */
void hd_server_free(hd_server *srv);

#endif
