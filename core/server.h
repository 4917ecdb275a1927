/* The server: one libuv loop, one listener, every connection and topic.
 *
 * Lifecycle: STARTING -> READY (listener open) -> DRAINING -> STOPPED.
 * All mutable state hangs off hd_server, so several servers can run in one
 * process (the unit tests do). */
#ifndef HD_SERVER_H
#define HD_SERVER_H

#include "config.h"
#include "drain.h"
#include "metrics.h"
#include "script.h"
#include "topic.h"

#include <uv.h>

typedef enum { HD_STARTING, HD_READY, HD_DRAINING, HD_STOPPED } hd_state;

struct hd_conn;
struct hd_wq_item;

typedef struct hd_server {
    uv_loop_t *loop;
    const hd_config *cfg;          /* borrowed; outlives the server */
    hd_state state;
    hd_phase phase;                /* drain phase while DRAINING */
    int stopping;                  /* hd_server_stop called: closing everything */
    uv_timer_t drain_timer;        /* steps the drain sequence */
    hd_drain_stats drain;
    uv_tcp_t listener;
    uv_check_t flusher;            /* writes queued bytes once per loop turn */
    uv_timer_t sweeper;            /* idle and close-deadline checks */
    struct hd_conn *conns;         /* every connection (doubly linked) */
    struct hd_conn *pend_head;     /* connections with bytes to write, FIFO */
    struct hd_conn *pend_tail;
    uv_idle_t spinner;             /* keeps the loop from blocking while some wait */
    struct hd_conn *reap;          /* connections to close after a fan-out */
    size_t nconns;                 /* TCP connections */
    size_t nws;                    /* of which WebSocket */
    size_t ws_cap;                 /* WebSocket limit: max_connections within the fd limit */
    size_t conn_cap;               /* TCP connections kept; beyond, closed at accept */
    uint64_t emfile_logged;        /* loop time of the last "out of descriptors" warning */
    hd_topics topics;
    hd_topic *pres_pending;        /* topics with a presence diff waiting */
    hd_topic *pres_flushing;       /* the ones being sent right now */
    uint64_t pres_seq;             /* phx_ref counter */
    uv_timer_t presence_timer;     /* the batch window */
    struct hd_shaper *shapers;     /* topics with rate shaping */
    size_t queued_bytes;           /* all connections' write queues */
    int fanout_hot;                /* subscribers' queues are deep: hold HTTP answers */
    uint64_t hot_since;            /* loop time fanout_hot was set */
    struct hd_conn *held;          /* HTTP connections whose answers are held */
    int need_shed;                 /* queued_bytes went over limits.max_queued_bytes */
    struct hd_wq_item *wq_free;    /* freelist of write-queue items */
    size_t wq_nfree;
    uint64_t next_conn_id;
    int port;                      /* the bound port, once listening */
    char node_id[64];              /* this node's id: host-pid-random */
    int handles_open;              /* server handles not yet closed */
    void (*on_stopped)(struct hd_server *);
    hd_metrics m;
    uint64_t (*topic_counts)[HD_TC_COUNT]; /* per config topic rule, + 1 for "other" */
    struct hd_script *script;      /* the running Lua generation, or NULL */
    struct hd_watch *watches;      /* scripts.watch directory watchers */
    uv_timer_t *watch_timer;       /* debounces their events */
    hd_script_stats ss;
    uint8_t rbuf[65536];           /* shared read buffer: reads are consumed synchronously */
} hd_server;

/* Prepares srv on loop with cfg. Returns 0 or a negative error. */
int hd_server_init(hd_server *srv, uv_loop_t *loop, const hd_config *cfg);
/* Opens the listener (last step of start-up) and turns READY. Logs the
 * address. Returns 0 or a negative libuv error (e.g. UV_EADDRINUSE). */
int hd_server_start(hd_server *srv);
/* Stops now: closes the listener and every connection (no close frames);
 * when every connection is gone, frees the scripts, closes the server's
 * handles and calls srv->on_stopped. The graceful way is hd_drain_start(),
 * which ends here. */
void hd_server_stop(hd_server *srv);
/* Closes the listener (idempotent). */
void hd_server_close_listener(hd_server *srv);
/* Frees what hd_server_init allocated; call after the loop has run the
 * close callbacks (on_stopped). */
void hd_server_free(hd_server *srv);

/* Adds n to counter kind (HD_TC_*) of the topic pattern policy p came from. */
void hd_server_count_topic(hd_server *srv, const hd_topic_policy *p, int kind, uint64_t n);

/* Closes the connections marked for closing during a fan-out. */
void hd_server_reap(hd_server *srv);

#endif
