/* The drain sequence: how a node leaves without errors or lost messages.
 *
 *   announce        /readyz answers 503; wait drain.announce_ms
 *   stop_accepting  the listener closes
 *   http            keep-alive API connections get Connection: close on
 *                   their next response; ones idle for drain.http_idle_ms
 *                   close; a request that reached the server is answered
 *   flush           every queued frame is written (bounded by flush_ms)
 *   disconnect      WebSockets close with 1012 and long-poll sessions
 *                   end (their held poll is answered), paced at
 *                   drain.disconnect_rate per second, handshake completed
 *   presence        this node's presence is withdrawn (cluster)
 *   stopped         shutdown("stopped"), exit
 *
 * Each phase calls the Lua shutdown(phase) hook. The whole sequence is
 * bounded by drain.timeout_ms: past it, what is left is closed at once and
 * the log names the phase that overran. One timer drives it. */
#ifndef HD_DRAIN_H
#define HD_DRAIN_H

#include "cluster.h"
#include "conn.h"
#include "http.h"
#include "longpoll.h"
#include "publish.h"
#include "script.h"

#include <stdint.h>
#include <uv.h>

typedef enum {
    HD_PHASE_NONE,
    HD_PHASE_ANNOUNCE,
    HD_PHASE_STOP_ACCEPTING,
    HD_PHASE_HTTP,
    HD_PHASE_FLUSH,
    HD_PHASE_DISCONNECT,
    HD_PHASE_PRESENCE,
    HD_PHASE_STOPPED,
    HD_PHASE_COUNT
} hd_phase;

typedef struct hd_drain_stats {
    uint64_t started_ms;              /* loop time the drain began */
    uint64_t phase_started_ms;
    uint64_t work_started_ms;         /* ... and its work, once its shutdown hooks were done */
    uint64_t duration_ms[HD_PHASE_COUNT];
    uint64_t http_closed;             /* idle keep-alive connections closed */
    uint64_t ws_closed;               /* WebSockets closed with 1012 */
    uint64_t lp_closed;               /* long-poll sessions ended */
    uint64_t forced;                  /* connections closed when the budget ran out */
    uint64_t lost_frames;             /* frames still queued on forced connections */
    double allowance;                 /* disconnect pacing: closes we may make now */
    int overran;                      /* the budget ran out */
} hd_drain_stats;

typedef struct hd_drain {
    uv_loop_t *loop;
    const hd_config *cfg;
    hd_net *net;
    hd_engine *eng;
    hd_scripts *sc;              /* shutdown(phase) */
    hd_cluster *cluster;         /* flushed too; NULL when single node */
    hd_lp_ctx *lp;               /* the long polls (forwarded ones are answered at disconnect) */
    /* The node's part, registered at start-up: close the listener; stop
     * (everything is done, or the budget ran out). */
    void (*close_listener)(void *ud);
    void (*stop)(void *ud);
    void *ud;
    hd_phase phase;
    int hooks_waiting;           /* shutdown hooks of the phase not yet answered */
    hd_drain_stats stats;
    uv_timer_t timer;            /* steps the sequence */
} hd_drain;

/* The phase's name ("announce", ...). */
const char *hd_phase_name(hd_phase p);

/* Prepares d (initialises its timer on loop). */
void hd_drain_init(hd_drain *d, uv_loop_t *loop, const hd_config *cfg, hd_net *net,
                   hd_engine *eng, hd_scripts *sc);
/* Starts the sequence; the node has stopped taking sockets already.
 * reason is logged. */
void hd_drain_start(hd_drain *d, const char *reason);
/* Stops stepping (the node stops at once). */
void hd_drain_cancel(hd_drain *d);
/* Closes the timer (cb gets it, its data then being data). */
void hd_drain_close(hd_drain *d, uv_close_cb cb, void *data);
/* Appends the drain's metrics (phase, phase durations, counters) to out. */
void hd_drain_metrics(const hd_drain *d, hd_str *out);

#endif
