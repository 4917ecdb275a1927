/* The drain sequence: how a node leaves without errors or lost messages.
 *
 *   announce        /readyz answers 503; wait drain.announce_ms
 *   stop_accepting  the listener closes
 *   http            keep-alive API connections get Connection: close on
 *                   their next response; ones idle for drain.http_idle_ms
 *                   close; a request that reached the server is answered
 *   flush           every queued frame is written (bounded by flush_ms)
 *   disconnect      WebSockets close with 1012, paced at
 *                   drain.disconnect_rate per second, handshake completed
 *   presence        this node's presence is withdrawn (cluster)
 *   stopped         shutdown("stopped"), exit
 *
 * Each phase calls the Lua shutdown(phase) hook. The whole sequence is
 * bounded by drain.timeout_ms: past it, what is left is closed at once and
 * the log names the phase that overran. One timer drives it. */
#ifndef HD_DRAIN_H
#define HD_DRAIN_H

#include <stdint.h>

struct hd_server;

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
    uint64_t duration_ms[HD_PHASE_COUNT];
    uint64_t http_closed;             /* idle keep-alive connections closed */
    uint64_t ws_closed;               /* WebSockets closed with 1012 */
    uint64_t forced;                  /* connections closed when the budget ran out */
    uint64_t lost_frames;             /* frames still queued on forced connections */
    double allowance;                 /* disconnect pacing: closes we may make now */
    int overran;                      /* the budget ran out */
} hd_drain_stats;

/* The phase's name ("announce", ...). */
const char *hd_phase_name(hd_phase p);

/* Starts the drain (idempotent). reason is logged. */
void hd_drain_start(struct hd_server *srv, const char *reason);

#endif
