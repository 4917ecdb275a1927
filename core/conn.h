/* A TCP connection: the write queue, limits and the two-step close.
 *
 * Writing: hd_conn_send() appends a reference to a shared hd_buf to the
 * connection's queue and puts the connection on the server's pending list;
 * the server's uv_check handle flushes each pending connection once per loop
 * turn, writing as many queued buffers as possible in one writev
 * (uv_try_write, then uv_write for what the kernel did not take). Buffers
 * stay referenced until written.
 *
 * Closing: hd_conn_close() unlinks the connection from its topics at once
 * and calls uv_close(); memory is freed only in the close callback. During a
 * fan-out, connections are never closed directly: hd_conn_send() marks an
 * overflowing one and the server reaps it after the loop over subscribers. */
#ifndef HD_CONN_H
#define HD_CONN_H

#include "buf.h"

#include <stdint.h>
#include <uv.h>

struct hd_server;
struct hd_http_conn;
struct hd_ws_conn;
struct hd_topic;
struct hd_topic_policy;

typedef struct hd_wq_item {
    struct hd_wq_item *next;
    hd_buf *buf;                 /* one reference held by this item */
    uint32_t off;                /* bytes of buf already written */
    uint64_t topic_id;           /* the topic a broadcast frame is from, or 0 */
} hd_wq_item;

typedef enum { HD_CONN_HTTP, HD_CONN_WS } hd_conn_kind;

enum {
    HD_CF_PENDING = 1 << 0,      /* on the server's pending list */
    HD_CF_WRITING = 1 << 1,      /* a uv_write is in flight */
    HD_CF_CLOSED = 1 << 2,       /* uv_close called; waiting for the callback */
    HD_CF_FINISH = 1 << 3,       /* close gracefully once the queue is written */
    HD_CF_SHUTDOWN = 1 << 4,     /* FIN sent; waiting for EOF or the deadline */
    HD_CF_REAP = 1 << 5,         /* on the reap list */
    HD_CF_WS_CLOSE_SENT = 1 << 6,/* our close frame is queued */
    HD_CF_WS_CLOSE_RECV = 1 << 7,/* the peer's close frame arrived */
    HD_CF_NO_INPUT = 1 << 8,     /* ignore further input (after an error) */
    HD_CF_LOOPBACK = 1 << 9,     /* peer address is loopback (valid with PEER_KNOWN) */
    HD_CF_PEER_KNOWN = 1 << 10,  /* the peer address was looked up */
    HD_CF_HELD = 1 << 11,        /* an HTTP answer held back: on srv->held */
};

typedef struct hd_conn {
    uv_tcp_t tcp;
    struct hd_server *srv;
    struct hd_conn *prev, *next; /* srv->conns */
    struct hd_conn *pend_prev, *pend_next; /* srv->pend_head: waiting to be flushed */
    struct hd_conn *reap_next;   /* srv->reap */
    hd_wq_item *wq_head, *wq_tail;
    size_t wq_bytes;             /* queued bytes not yet written */
    size_t inflight;             /* bytes handed to uv_write */
    uv_write_t *wreq;            /* allocated while a write is in flight */
    uv_shutdown_t *sreq;
    uint64_t id;
    uint64_t last_active;        /* loop time (ms) of the last input */
    uint64_t deadline;           /* while closing: forced close at this time */
    uint32_t flags;              /* HD_CF_* */
    uint16_t reap_code;          /* close code for a reaped connection */
    uint8_t kind;                /* hd_conn_kind */
    struct hd_http_conn *http;   /* HTTP state; NULL once upgraded */
    struct hd_ws_conn *ws;       /* WebSocket state after the upgrade */
} hd_conn;

/* Accepts a pending connection on the server's listener. */
void hd_conn_accept(struct hd_server *srv);
/* Accepts every connection still waiting in the listener's backlog (just
 * before the listener closes, which would reset them). */
void hd_conn_accept_backlog(struct hd_server *srv);

/* Queues b on c's write queue, taking one reference of its own. For a
 * WebSocket, a queue over limits.send_queue_bytes marks c for a 1013 close
 * (done by hd_server_reap) and returns HD_EFULL; a closing connection
 * returns HD_ECLOSED. Returns 0 when queued. */
int hd_conn_send(hd_conn *c, hd_buf *b);
/* The same for a frame of topic tp under its policy p: over the queue limit
 * (p->max_queue_bytes if set, else limits.send_queue_bytes), on_overflow
 * "drop_oldest" drops this topic's oldest queued frames to make room (or
 * this frame; counted) and keeps the connection; "close" closes it (1013). */
int hd_conn_send_topic(hd_conn *c, hd_buf *b, const struct hd_topic *tp,
                       const struct hd_topic_policy *p);
/* Copies len bytes into a new buffer and queues it (no limit check: used
 * for replies whose size the request bounds). */
int hd_conn_send_copy(hd_conn *c, const void *p, size_t len);

/* Takes c off the server's pending list (no-op when not on it). */
void hd_conn_unpend(hd_conn *c);

/* Fan-out backpressure (see server.c): hd_conn_hold() moves an HTTP
 * connection with an answer queued to the server's held list, unwritten;
 * hd_conn_release_held() writes every held answer. */
void hd_conn_hold(hd_conn *c);
void hd_conn_release_held(struct hd_server *srv);

/* Writes what is queued; called by the server's flusher. */
void hd_conn_flush(hd_conn *c);

/* Closes gracefully: stop accepting data, write out the queue, send FIN,
 * wait for the peer's EOF (bounded by deadline_ms), then close. */
void hd_conn_finish(hd_conn *c, uint64_t deadline_ms);
/* Closes now: unlinks from topics, drops the queue, uv_close. Idempotent. */
void hd_conn_close(hd_conn *c);

/* Starts the WebSocket close handshake with code and reason: queues the
 * close frame (after frames already queued), stops deliveries, and closes
 * the TCP connection when the peer's close arrives or ws_close_ms passes. */
void hd_conn_ws_close(hd_conn *c, uint16_t code, const char *reason);
/* Same, but first drops queued frames not yet being written (counted as
 * dropped): for slow consumers (1013). */
void hd_conn_ws_close_now(hd_conn *c, uint16_t code, const char *reason);

/* Returns 1 when c's peer is a loopback address (looked up once). */
int hd_conn_is_loopback(hd_conn *c);
/* Writes the peer address of c into buf ("?" when unknown). */
void hd_conn_peer(hd_conn *c, char *buf, size_t len);

/* True while c accepts new outbound data. */
static inline int hd_conn_open(const hd_conn *c)
{
    return !(c->flags & (HD_CF_CLOSED | HD_CF_FINISH | HD_CF_WS_CLOSE_SENT | HD_CF_REAP));
}

#endif
