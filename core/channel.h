/* Phoenix Channels (V2 and V1) over a WebSocket or long-poll session: the handshake's Phoenix
 * part (vsn, authenticate), join, leave, heartbeat and client pushes. It is
 * the handler of its WebSocket context (wsconn.c); frames come from phx.c,
 * subscriptions and presence from the engine. */
#ifndef HD_CHANNEL_H
#define HD_CHANNEL_H

#include "conn.h"
#include "http.h"
#include "publish.h"
#include "script.h"
#include "longpoll.h"
#include "wsconn.h"

#define HD_TOPIC_MAX_BYTES 255

struct json_t;

/* A check of every join before its hooks, registered at start-up (the
 * node's rule for herald:status): NULL lets the join go on, else the
 * reason it is refused with. It may change payload (take out what the
 * hooks must not see). */
typedef const char *(*hd_join_gate)(void *ud, hd_conn *c, const char *topic, size_t tlen,
                                    struct json_t *payload);

typedef struct hd_channel_ctx {
    hd_ws_ctx ws;                /* first: the sessions' context, with this as handler */
    hd_lp_ctx lp;                /* the long-poll sessions' (the same handler) */
    const hd_config *cfg;
    hd_stats *st;
    hd_net *net;                 /* the WebSocket cap */
    hd_engine *eng;              /* topics and presence */
    hd_scripts *sc;              /* authenticate, join, message hooks */
    int accepting;               /* new sockets are taken (READY) */
    struct hd_cluster *cluster;  /* history in Redis, when clustered (else NULL) */
    struct park **parked;        /* sockets whose hook waits, by id (chained; power of two) */
    size_t parked_cap, nparked;
    size_t rechecks_closed;      /* channels a recheck closed (hd_channel_recheck) */
    hd_join_gate join_gate;      /* or NULL */
    void *gate_ud;
} hd_channel_ctx;

void hd_channel_init(hd_channel_ctx *ch, const hd_config *cfg, hd_stats *st, hd_net *net,
                     hd_engine *eng, hd_scripts *sc);

/* Answers a request on a WebSocket mount path: 101 and the switch to a
 * Phoenix socket, or the documented refusal. upgrade is llhttp's verdict
 * that the request asked for a protocol switch. */
void hd_channel_handshake(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r, int upgrade);

/* Answers a request on a long-poll mount path (<mount>/longpoll): a
 * session's poll or messages, or the opening of a new session (the same
 * checks and authenticate as a WebSocket handshake). */
void hd_channel_longpoll(hd_channel_ctx *ch, hd_conn *c, hd_http_req *r);

/* Closes the long polls' timer (cb gets it, its data then being data). */
void hd_channel_close(hd_channel_ctx *ch, uv_close_cb cb, void *data);

/* Re-runs the join hook for every topic c has joined (after a reload) and
 * closes, with phx_close, the channels it now refuses. Returns how many it
 * closed at once; hooks that wait close theirs when they are answered. */
size_t hd_channel_recheck(hd_channel_ctx *ch, hd_conn *c);

/* Frees what the sockets' waiting hooks left (at shutdown, after every
 * connection closed: normally nothing). */
void hd_channel_free(hd_channel_ctx *ch);

#endif
