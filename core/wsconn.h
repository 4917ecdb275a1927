/* A WebSocket session over a connection: the RFC 6455 handshake, frames
 * in (core/ws.c's parser), ping/pong, and the close handshake. It knows
 * nothing of what the messages mean: the application is a handler it was
 * given at start-up (h2o's lib/websocket.c is the model), and channel.c is
 * that handler for Phoenix.
 *
 * It also holds each client to limits.client_messages_per_s: a token
 * bucket per session counts data messages (not control frames); one over
 * the rate still goes to the handler, marked refused, and a client whose
 * messages are still refused after 5 s is closed with 1008 "message rate
 * exceeded". */
#ifndef HD_WSCONN_H
#define HD_WSCONN_H

#include "conn.h"
#include "http.h"
#include "ws.h"

typedef struct hd_ws_handler {
    /* A complete data message (HD_WS_TEXT, UTF-8 already checked, or
     * HD_WS_BINARY); data is writable and valid during the call. refused:
     * the message is over the client message rate
     * (limits.client_messages_per_s): answer it as refused and act on
     * nothing in it. Return 0 to go on, non-zero after closing (parsing
     * stops). */
    int (*on_message)(void *ud, hd_conn *c, int opcode, uint8_t *data, size_t len, int refused);
    /* The session is closing (our close began, or the connection is
     * closing): unlink whatever refers to c. reason says why ("closed"
     * when the peer or the network ended it, else the close reason; never
     * NULL). May be called more than once, and may close c itself. */
    void (*on_close)(void *ud, hd_conn *c, const char *reason);
} hd_ws_handler;

/* The client message rate (limits.client_messages_per_s and _burst): a
 * token bucket per session, refilled from the loop time when a message
 * arrives (no timer). Times are loop milliseconds in 32 bits: differences
 * are right for 49 days; a session that sends no message for longer may
 * find its bucket refilled short. (Long-poll sessions use it too.) */
typedef struct hd_ws_rate {
    float tokens;        /* messages that may come now: at most the burst */
    uint32_t at;         /* loop time tokens was brought up to */
    uint32_t refused_at; /* loop time of the last refused message */
    uint32_t refusing;   /* how long refusals have gone on, until refused_at (ms) */
} hd_ws_rate;

enum { HD_WS_RATE_OK, HD_WS_RATE_REFUSED, HD_WS_RATE_CLOSE };

/* A full bucket, and no refusal for long enough. */
void hd_ws_rate_init(hd_ws_rate *r, const hd_config *cfg, uint64_t now);
/* A data message of c arrives: HD_WS_RATE_OK, HD_WS_RATE_REFUSED (over
 * the rate: the handler answers it as refused; counted), or
 * HD_WS_RATE_CLOSE (refusals went on for 5 s: close c with 1008 "message
 * rate exceeded"; counted and logged). */
int hd_ws_rate_check(hd_ws_rate *r, const hd_config *cfg, hd_stats *st, const hd_conn *c);

typedef struct hd_ws_ctx {
    hd_conn_ops ops;             /* first: c->ops of a WebSocket connection points here */
    const hd_config *cfg;        /* max_message_bytes, ws_close_ms, client_messages_* */
    hd_stats *st;
    const hd_ws_handler *h;
    void *ud;
} hd_ws_ctx;

void hd_wsconn_init(hd_ws_ctx *w, const hd_config *cfg, hd_stats *st, const hd_ws_handler *h,
                    void *ud);

/* The message deadline (timeouts.ws_message_ms), for the sweeper: a
 * WebSocket connection part-way through a frame or a fragmented message for
 * longer than that is closed with 1008 and its partial message freed (frames
 * trickling in do not extend it). Returns 1 when it closed c. */
int hd_wsconn_check_message(hd_conn *c, uint64_t now);

/* Checks the RFC 6455 parts of a handshake request (method, Upgrade,
 * Connection, Sec-WebSocket-Version, Sec-WebSocket-Key). Returns 0 with the
 * Sec-WebSocket-Accept value in accept, or -1 after answering the error
 * (the caller counts the refusal). */
int hd_wsconn_check(hd_conn *c, hd_http_req *r, int upgrade, char accept[29]);

/* Answers 101 (offering subprotocol when not NULL) and switches c to a
 * WebSocket session of w. Returns 0, or HD_ENOMEM after answering 503. */
int hd_wsconn_accept(hd_ws_ctx *w, hd_conn *c, hd_http_req *r, const char accept[29],
                     const char *subprotocol);

#endif
