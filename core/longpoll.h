/* Phoenix's LongPoll transport: sessions without a socket of their own.
 *
 * A session is a connection (HD_CONN_LP, conn.c) with no descriptor: the
 * channel layer joins, pushes to and closes it as it does a WebSocket, and
 * frames queue on it the same way. Its client reaches it with HTTP
 * requests to <mount>/longpoll that carry its token:
 *
 *   GET (no token)   opens a session (channel.c runs the handshake's
 *                    checks and authenticate, then hd_lp_open): 200
 *                    {"status":410,"token":T,"messages":[]}
 *   GET ?token=T     a poll: answered at once with what is queued
 *                    {"status":200,"token":T,"messages":["<frame>",...]},
 *                    else held until something is (the writer's turn hands
 *                    the queue to it) or longpoll.poll_ms passes (204)
 *   POST ?token=T    messages, one per line (application/x-ndjson: text,
 *                    or base64 of a binary message), handed to the handler
 *                    in order as a WebSocket's would be: {"status":200}
 *
 * A token is the session's id and an HMAC of it under a secret drawn at
 * start: it cannot be forged, and a token of an earlier process fails. In
 * a cluster the node's id follows, and a request for a session of another
 * node is forwarded there through Redis and answered from there (longpoll.c,
 * "across nodes"). A token whose session is gone is answered
 * {"status":410}: the client reconnects. A session without a held poll for longpoll.window_ms
 * is closed (abandoned). Closing a session answers its held poll with
 * what is left, or 410; frames still queued wait for the next poll for
 * timeouts.ws_close_ms at most.
 *
 * Deadlines (held polls, windows) are one list ordered by time and one
 * timer at its head: no timer per session. */
#ifndef HD_LONGPOLL_H
#define HD_LONGPOLL_H

#include "conn.h"
#include "http.h"
#include "wsconn.h"

#include <stdint.h>
#include <uv.h>

#define HD_LP_TOKEN_LEN 48 /* hex: 16 of the id, 32 of the HMAC */
#define HD_LP_TOKEN_MAX (HD_LP_TOKEN_LEN + 63) /* in a cluster, the node's id follows */

struct lp_session;
struct lp_due;
struct hd_cluster;

typedef struct hd_lp_ctx {
    hd_conn_ops ops;             /* first: c->ops of a session points here */
    const hd_config *cfg;        /* longpoll.*, limits, timeouts.ws_close_ms */
    hd_stats *st;
    hd_net *net;
    const hd_ws_handler *h;      /* the sessions' handler (channel.c's, as for WebSocket) */
    void *ud;
    uint8_t secret[32];          /* signs tokens: drawn at start */
    struct lp_due *head, *tail;  /* sessions and forwarded requests with a deadline, earliest first */
    uv_timer_t timer;            /* at the head's deadline */
    struct lp_session *feeding;  /* the session whose POST is being handed on */
    char why[128];               /* ... and why it closed meanwhile */
    /* In a cluster (set at start-up, else NULL): a request for a session
     * of another node goes there (hd_cluster_to_node), and its answer
     * comes back to hd_lp_node_message. */
    struct hd_cluster *cluster;
    const char *node;            /* this node's id */
    uint64_t fwd_seq;            /* numbers the requests sent away */
} hd_lp_ctx;

void hd_lp_init(hd_lp_ctx *lp, uv_loop_t *loop, const hd_config *cfg, hd_stats *st,
                hd_net *net, const hd_ws_handler *h, void *ud);
/* Closes the timer (cb gets it, its data then being data). */
void hd_lp_close(hd_lp_ctx *lp, uv_close_cb cb, void *data);

/* A request to a long-poll path, on HTTP connection c: answered here (1)
 * when it is a preflight, another method, or a request with a token (a
 * poll or a POST of a live session, or a token refused); 0 when it is a
 * GET without a token, which opens a session: the caller checks and
 * authenticates it, then calls hd_lp_open or answers with hd_lp_error. */
int hd_lp_request(hd_lp_ctx *lp, hd_conn *c, hd_http_req *r);
/* Opens a session for the request r of c and answers it with the token.
 * v1: the client speaks the V1 serializer. Returns the session (the
 * caller sets its identity and assigns), or NULL after answering 503. */
hd_conn *hd_lp_open(hd_lp_ctx *lp, hd_conn *c, hd_http_req *r, int v1);
/* Answers a long-poll request with an error: HTTP http_status, body
 * {"status":status,"error":msg} (status is what phoenix.js acts on: 403
 * closes for good, 500 retries), the CORS header. close as for
 * hd_http_respond. */
void hd_lp_error(hd_conn *c, const hd_http_req *r, int http_status, int status, const char *msg,
                 int close);

/* Another node's message to this one's long polls (the cluster's
 * on_node_message): a request forwarded to one of its sessions, or the
 * answer to one it forwarded. */
void hd_lp_node_message(void *ud, const char *msg, size_t len);
/* The drain: polls this node forwarded to other nodes are answered 204
 * (their sessions go on there; the client's next poll comes through a
 * new connection). Returns how many. */
size_t hd_lp_drain_forwards(hd_lp_ctx *lp);

/* A session id's token under secret, into out (NUL-terminated). */
void hd_lp_token(const uint8_t secret[32], uint64_t id, char out[HD_LP_TOKEN_LEN + 1]);
/* 1 with *id when t (len bytes) is a token signed under secret, else 0. */
int hd_lp_token_verify(const uint8_t secret[32], const char *t, size_t len, uint64_t *id);

#endif
