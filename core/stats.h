/* The counters every layer adds to: one struct per node, passed down by
 * pointer to each module at start-up (libuv style: each module gets the
 * narrow pointers it needs). metrics.c renders them as Prometheus text. */
#ifndef HD_STATS_H
#define HD_STATS_H

#include <stdint.h>

/* Why a connection was refused (herald_tcp_refused_total{reason}). */
enum {
    HD_REFUSE_DESCRIPTORS,        /* accept failed for want of a descriptor (EMFILE) */
    HD_REFUSE_CAPACITY,           /* over the TCP cap, or the admin listener's */
    HD_REFUSE_WS_CAPACITY,        /* an upgrade over the WebSocket cap */
    HD_REFUSE_PER_IP,             /* limits.max_connections_per_ip */
    HD_REFUSE_RATE,               /* limits.connect_rate */
    HD_REFUSE_RATE_PER_IP,        /* limits.connect_rate_per_ip */
    HD_REFUSE_DRAINING,           /* an upgrade while the node drains */
    HD_REFUSE_COUNT
};

typedef struct hd_stats {
    uint64_t tcp_accepted;        /* TCP connections accepted */
    uint64_t tcp_refused[HD_REFUSE_COUNT]; /* refused, by reason */
    uint64_t http_requests;       /* HTTP requests answered (any status) */
    uint64_t http_errors_4xx;     /* ... of which 4xx */
    uint64_t http_head_timeouts;  /* requests (or silent connections) cut by timeouts.http_head_ms */
    uint64_t http_body_timeouts;  /* request bodies cut by timeouts.http_body_ms */
    uint64_t http_inbound_sheds;  /* requests answered 503: the largest partial body over limits.max_inbound_bytes */
    uint64_t ws_upgrades;         /* successful WebSocket handshakes */
    uint64_t ws_rejected;         /* handshakes refused */
    uint64_t ws_bad_origin;       /* ... of which for their Origin (ws.allowed_origins) */
    uint64_t ws_message_timeouts; /* closed 1008: a message not complete within timeouts.ws_message_ms */
    uint64_t ws_inbound_closes;   /* closed 1009: the largest partial message over limits.max_inbound_bytes */
    uint64_t ws_closes_sent[16];  /* server-sent close codes 1000..1015 */
    uint64_t ws_msgs_in;          /* Phoenix messages received */
    uint64_t ws_bad_msgs;         /* malformed Phoenix messages */
    uint64_t client_msgs_limited; /* messages refused: over limits.client_messages_per_s */
    uint64_t client_rate_closes;  /* closed 1008: refused messages kept coming for 5 s */
    uint64_t joins;               /* successful joins */
    uint64_t joins_refused;       /* refused joins */
    uint64_t publishes;           /* publish requests accepted (per topic) */
    uint64_t publishes_no_subs;   /* ... to a topic with no subscriber here */
    uint64_t deliveries;          /* frames queued to subscribers */
    uint64_t dropped_slow;        /* frames dropped from closed slow consumers */
    uint64_t dropped_binary_v1;   /* binary frames not sent to V1 subscribers (no binary in V1) */
    uint64_t dropped_binary_lp;   /* binary frames not sent to long-poll sessions (text only) */
    uint64_t lp_opened;           /* long-poll sessions opened */
    uint64_t lp_expired;          /* ... closed after longpoll.window_ms without a poll */
    uint64_t lp_polls;            /* polls (GET with a session's token) */
    uint64_t lp_posts;            /* POSTs of messages with a session's token */
    uint64_t lp_forged;           /* tokens that did not verify */
    uint64_t lp_gone;             /* tokens of sessions that are gone */
    uint64_t lp_fwd_out, lp_fwd_in; /* long-poll requests forwarded to, and from, other nodes */
    uint64_t lp_fwd_timeouts;     /* ... whose answer did not come back in time */
    uint64_t lp_fwd_cancels;      /* polls forwarded here that their node gave up (lc1) */
    uint64_t lp_fwd_bad;          /* other nodes' long-poll messages that could not be read */
    uint64_t dropped_no_v1;       /* frames a V1 subscriber missed: no V1 copy could be built */
    uint64_t slow_closes;         /* connections closed with 1013 */
    uint64_t idle_closes;         /* connections closed for idleness */
    uint64_t bytes_out;           /* bytes written to sockets */
    uint64_t shaped_received;     /* frames published to shaped topics */
    uint64_t shaped_released;     /* ... released to subscribers */
    uint64_t shaped_coalesced;    /* ... replaced by a newer one (coalesce = "latest") */
    uint64_t dropped_oldest;      /* frames dropped by on_overflow = "drop_oldest" */
    uint64_t shed;                /* connections closed to keep limits.max_queued_bytes */
    uint64_t answers_held;        /* HTTP answers held by fan-out backpressure */
    uint64_t presence_diffs;      /* presence_diff frames built (one per topic per batch) */
} hd_stats;

#endif
