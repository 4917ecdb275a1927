/* The transport: TCP connections, their write queues, the writer that
 * flushes them once per loop turn, the two-step close, and an index from
 * connection id (and identity) to connection.
 *
 * A connection knows nothing of the protocol it carries: it holds a
 * pointer to a protocol vtable (hd_conn_ops) and an opaque protocol state.
 * New connections get hd_net.accept_ops (HTTP); an upgrade swaps both. The
 * vtable is the only way up: drain, shedding, the slow-consumer reaper and
 * herald.disconnect close any connection through hd_conn_shut() without
 * knowing its protocol. The protocol layer may embed hd_conn_ops as the
 * first member of its own context struct and recover that context from
 * c->ops (one instance per server: no globals, no per-connection cost).
 *
 * Writing: hd_conn_send() appends a reference to a shared hd_buf to the
 * connection's queue and puts the connection on the pending list; the
 * writer (a uv_check handle, plus an idle handle that keeps the loop from
 * blocking in poll while anything is pending) flushes pending connections
 * in slices, each with one writev (uv_try_write, then uv_write for what the
 * kernel did not take). Buffers stay referenced until written. Whatever
 * queues bytes, in whatever loop phase (I/O, timers, Lua timers, drain
 * steps), the loop writes them before it next blocks.
 *
 * Closing: hd_conn_close() calls ops->on_closed (the protocol unlinks the
 * connection from topics and presence) and uv_close(); memory is freed only
 * in the close callback (ops->free, then the connection). During a fan-out
 * connections are never closed: one that overflows is marked and reaped by
 * the writer once per loop turn. */
#ifndef HD_CONN_H
#define HD_CONN_H

#include "buf.h"
#include "config.h"
#include "peer.h"
#include "stats.h"

#include <stdint.h>
#include <uv.h>

struct hd_conn;
struct hd_sub;

typedef struct hd_wq_item {
    struct hd_wq_item *next;
    hd_buf *buf;                 /* one reference held by this item */
    uint32_t off;                /* bytes of buf already written */
    uint64_t topic_id;           /* the topic a broadcast frame is from, or 0 */
} hd_wq_item;

/* HTTP and WebSocket connections have a socket; a long-poll session
 * (HD_CONN_LP) has none: its queue is taken by the polls of its client,
 * which come on HTTP connections of their own (longpoll.c). */
typedef enum { HD_CONN_HTTP, HD_CONN_WS, HD_CONN_LP } hd_conn_kind;

enum {
    HD_CF_PENDING = 1 << 0,      /* on the pending list */
    HD_CF_WRITING = 1 << 1,      /* a uv_write is in flight */
    HD_CF_CLOSED = 1 << 2,       /* uv_close called; waiting for the callback */
    HD_CF_FINISH = 1 << 3,       /* close gracefully once the queue is written */
    HD_CF_SHUTDOWN = 1 << 4,     /* FIN sent; waiting for EOF or the deadline */
    HD_CF_REAP = 1 << 5,         /* on the reap list */
    HD_CF_WS_CLOSE_SENT = 1 << 6,/* our close frame is queued (the protocol's close began) */
    HD_CF_WS_CLOSE_RECV = 1 << 7,/* the peer's close frame arrived */
    HD_CF_NO_INPUT = 1 << 8,     /* ignore further input (after an error) */
    HD_CF_TRUSTED_PEER = 1 << 9, /* the TCP peer is a trusted proxy (listen.trusted_proxies) */
    HD_CF_PROXIED = 1 << 10,     /* a PROXY protocol header came: X-Forwarded-For is not read */
    HD_CF_HELD = 1 << 11,        /* an HTTP answer held back: on the held list */
    HD_CF_XFF = 1 << 12,         /* the client was named by X-Forwarded-For (admitted at upgrade) */
    HD_CF_ADMIN = 1 << 13,       /* accepted on the admin listener */
    HD_CF_LEFT = 1 << 14,        /* the protocol's close ran (channels left, disconnect hook) */
    HD_CF_BUSY = 1 << 15,        /* a hook of the socket waits: its messages queue (channel.c) */
    HD_CF_V1 = 1 << 16,          /* the socket speaks Phoenix's V1 serializer (channel.c, topic.c) */
    HD_CF_TEXT = 1 << 17,        /* the transport carries text only: no binary frames (long poll) */
    HD_CF_POLL = 1 << 18,        /* an HTTP connection whose request is a held long poll */
    HD_CF_PAUSED = 1 << 19,      /* a connection without a socket is not read (hd_conn_read_stop) */
};

/* A protocol, as the transport sees it. Every entry is required, but the
 * last two, which only connections without a socket have (NULL else). */
typedef struct hd_conn_ops {
    /* Bytes read (valid during the call only). */
    void (*on_read)(struct hd_conn *c, uint8_t *data, size_t len);
    /* Close at the protocol level with code and reason (a WebSocket close
     * handshake; HTTP finishes gracefully and ignores the code). */
    void (*close)(struct hd_conn *c, uint16_t code, const char *reason);
    /* The connection is closing (called once, from hd_conn_close, before
     * uv_close): unlink it from whatever refers to it. */
    void (*on_closed)(struct hd_conn *c);
    /* Frees c->proto (from the close callback). */
    void (*free)(struct hd_conn *c);
    /* Without a socket: the writer's turn (bytes are queued): the protocol
     * takes what it can deliver now and hands it on (hd_conn_written). */
    void (*write)(struct hd_conn *c);
    /* Without a socket: reading may go on (hd_conn_read_start after a
     * hd_conn_read_stop). */
    void (*resume)(struct hd_conn *c);
} hd_conn_ops;

/* An identity from authenticate, shared by the index: owned by the
 * connection, freed with it. */
typedef struct hd_ident {
    struct hd_ident *next;       /* the index's chain */
    struct hd_conn *conn;
    uint32_t hash;
    char id[];                   /* NUL-terminated */
} hd_ident;

typedef struct hd_conn {
    uv_tcp_t tcp;
    struct hd_net *net;
    const hd_conn_ops *ops;      /* the protocol; swapped by an upgrade */
    void *proto;                 /* the protocol's state, owned by ops */
    struct hd_conn *prev, *next; /* net->conns */
    struct hd_conn *pend_prev, *pend_next; /* net->pend_head (or net->held) */
    struct hd_conn *reap_next;   /* net->reap */
    hd_wq_item *wq_head, *wq_tail;
    size_t wq_bytes;             /* queued bytes not yet written */
    uint64_t id;
    union {                      /* (one word: an open connection has no deadline) */
        uint64_t last_active;    /* while open: loop time (ms) of the last input */
        uint64_t deadline;       /* once closing: forced close at this time */
    };
    uint32_t inflight;           /* bytes handed to uv_write (a batch is at most 1 GiB) */
    uint32_t flags;              /* HD_CF_* */
    uint32_t nsubs;              /* entries on subs */
    uint8_t kind;                /* hd_conn_kind */
    struct hd_sub *subs;         /* joined topics (the engine's, topic.c links them) */
    hd_ident *ident;             /* identity from authenticate, or NULL (then the id) */
    hd_peer *peer;               /* the client address it counts against (net->peers) */
    char *assigns;               /* assigns from authenticate as JSON, or NULL */
} hd_conn;

typedef struct hd_net {
    uv_loop_t *loop;
    const hd_config *cfg;        /* borrowed */
    hd_stats *st;                /* borrowed */
    const hd_conn_ops *accept_ops; /* the protocol of new connections */
    hd_conn *conns;              /* every connection (doubly linked) */
    hd_conn *pend_head, *pend_tail; /* connections with bytes to write, FIFO */
    hd_conn *held;               /* HTTP connections whose answers are held */
    hd_conn *reap;               /* connections to close after a fan-out */
    size_t nconns;               /* TCP connections */
    size_t nws;                  /* of which WebSocket */
    size_t nlp;                  /* long-poll sessions (no socket: not in nconns) */
    size_t ws_cap;               /* WebSocket limit: max_connections within the fd limit */
    size_t conn_cap;             /* TCP connections kept; beyond, closed at accept */
    size_t queued_bytes;         /* all connections' write queues */
    size_t inbound_bytes;        /* partial inbound messages and request bodies (limits.max_inbound_bytes) */
    int need_shed;               /* queued_bytes went over limits.max_queued_bytes */
    int hold;                    /* fan-out backpressure may hold HTTP answers */
    int fanout_hot;              /* subscribers' queues are deep: hold HTTP answers */
    uint64_t hot_since;          /* loop time fanout_hot was set */
    uint64_t refused_logged;     /* loop time of the last refusal warning */
    uint64_t refused_unlogged;   /* refusals since then */
    size_t nadmin;               /* open connections from the admin listener (at most 32) */
    hd_peers peers;              /* client address -> connections, connect-rate bucket */
    hd_bucket rate;              /* limits.connect_rate */
    uint64_t next_conn_id;
    hd_wq_item *wq_free;         /* freelist of write-queue items */
    size_t wq_nfree;
    hd_conn **ids;               /* id -> connection: open addressing, linear probes */
    size_t ids_cap;              /* a power of two (0 before the first) */
    size_t ids_count;
    hd_ident **idents;           /* identity -> connections: chained */
    size_t idents_cap;
    size_t idents_count;
    uv_check_t writer;           /* flushes pending connections once per loop turn */
    uv_idle_t spinner;           /* keeps the loop from blocking while bytes wait */
    int handles;                 /* of writer and spinner, not yet closed */
    void (*on_empty)(struct hd_net *); /* the last connection is gone (while stopping) */
    void *data;                  /* the owner's */
    int stopping;                /* closing everything: call on_empty at zero */
    uint8_t rbuf[65536];         /* shared read buffer: reads are consumed synchronously */
} hd_net;

/* Prepares net on loop; sizes the connection caps from cfg and
 * RLIMIT_NOFILE. Returns 0. */
int hd_net_init(hd_net *net, uv_loop_t *loop, const hd_config *cfg, hd_stats *st);
/* Starts the writer (with the listener). */
void hd_net_start(hd_net *net);
/* Closes every connection now (no close frames). */
void hd_net_close_all(hd_net *net);
/* Closes the writer's handles; cb runs for each (two calls), the handle's
 * data then being data. */
void hd_net_close_handles(hd_net *net, uv_close_cb cb, void *data);
/* Frees what is left (freelist, indexes); after the handles closed. */
void hd_net_free(hd_net *net);

/* Takes a socket just accepted (non-blocking; net owns fd from here):
 * admits it by the caps and the limits on its client address and the
 * connect rates, or answers 503 and closes it at once (counted, and a
 * warning a second at most). admin: from the admin listener (its own
 * small cap, no per-address limits). */
void hd_net_take(hd_net *net, int fd, int admin);
/* Answers 503 on a just-accepted socket and closes it now: for refusals
 * before a connection exists (reason HD_REFUSE_*; retry_s > 0 adds
 * Retry-After). */
void hd_net_refuse_fd(hd_net *net, int fd, int reason, unsigned retry_s);
/* Counts a refusal and warns (at most once a second). */
void hd_net_count_refusal(hd_net *net, int reason);
/* The JSON error of a refusal reason, and its label in
 * herald_tcp_refused_total{reason}. */
const char *hd_refusal_message(int reason);
const char *hd_refusal_label(int reason);
/* "Retry-After: <s>\r\n" into out, or "" when retry_s is 0. */
void hd_retry_after(char out[48], unsigned retry_s);

/* The open connection with this id, or NULL. */
hd_conn *hd_net_find(hd_net *net, uint64_t id);
/* The first connection with this identity, then the next: pass the one
 * before (NULL for the first). */
hd_conn *hd_net_find_ident(hd_net *net, const char *id, hd_conn *after);

/* Sets c's identity (copied; NULL clears) and indexes it. Returns 0 or
 * HD_ENOMEM. */
int hd_conn_set_identity(hd_conn *c, const char *id);
/* The identity, or NULL. */
static inline const char *hd_conn_identity(const hd_conn *c) { return c->ident ? c->ident->id : NULL; }
/* A connection without a socket (HD_CONN_LP, with protocol ops and state
 * proto), of the same client as from (counted against its address): in
 * the index and the connection list, closed and freed as any other.
 * Returns it, or NULL when out of memory. */
hd_conn *hd_net_add_session(hd_net *net, const hd_conn_ops *ops, void *proto, hd_conn *from);
/* Without a socket: n queued bytes were handed on (ops->write). */
void hd_conn_written(hd_conn *c, size_t n);
/* Switches c to another protocol: kind, vtable and state (the old state is
 * the caller's to free). */
void hd_conn_upgrade(hd_conn *c, hd_conn_kind kind, const hd_conn_ops *ops, void *proto);

/* Queues b on c's write queue, taking one reference of its own. For a
 * WebSocket, a queue over limits.send_queue_bytes marks c for a 1013 close
 * (done by the writer) and returns HD_EFULL; a closing connection returns
 * HD_ECLOSED. Returns 0 when queued. */
int hd_conn_send(hd_conn *c, hd_buf *b);
/* The same for a broadcast frame of topic topic_id: over limit (0:
 * limits.send_queue_bytes), drop_oldest drops this topic's oldest queued
 * frames to make room (or this frame; counted) and keeps the connection;
 * otherwise it is closed (1013). */
int hd_conn_send_topic(hd_conn *c, hd_buf *b, uint64_t topic_id, size_t limit, int drop_oldest);
/* Copies len bytes into a new buffer and queues it (no limit check: used
 * for replies whose size the request bounds). */
int hd_conn_send_copy(hd_conn *c, const void *p, size_t len);
/* Queues b even while the protocol's close is under way (the close frame
 * itself). Returns 0 or HD_ENOMEM. */
int hd_conn_send_last(hd_conn *c, hd_buf *b);
/* Drops queued frames not yet being written, counting each as dropped
 * (slow consumer). */
void hd_conn_drop_queue(hd_conn *c);

/* Writes what is queued (the writer calls it). */
void hd_conn_flush(hd_conn *c);
/* Closes the connections marked during fan-outs, and sheds over
 * limits.max_queued_bytes (the writer calls it once per loop turn). */
void hd_net_reap(hd_net *net);

/* Closes gracefully: stop accepting data, write out the queue, send FIN,
 * wait for the peer's EOF (bounded by deadline_ms), then close. */
void hd_conn_finish(hd_conn *c, uint64_t deadline_ms);
/* Closes now: ops->on_closed, drops the queue, uv_close. Idempotent. */
void hd_conn_close(hd_conn *c);
/* Closes at the protocol level (ops->close). */
static inline void hd_conn_shut(hd_conn *c, uint16_t code, const char *reason) { c->ops->close(c, code, reason); }
/* Drops what is queued (counted), then hd_conn_shut: for slow consumers. */
void hd_conn_shut_now(hd_conn *c, uint16_t code, const char *reason);

/* Stops reading c (a protocol waiting for something before it can take
 * more input), and reads again. */
void hd_conn_read_stop(hd_conn *c);
int hd_conn_read_start(hd_conn *c);

/* Returns 1 when c's client address is a loopback address. */
int hd_conn_is_loopback(hd_conn *c);
/* Writes c's client address into buf ("?" when unknown): the TCP peer,
 * or the client a trusted proxy named. */
void hd_conn_client(hd_conn *c, char *buf, size_t len);
/* Attributes c to client a, named by a trusted proxy (NULL: back to the
 * TCP peer itself); xff: named by X-Forwarded-For (admitted later with
 * hd_conn_admit), else by a PROXY header. Returns 0 or HD_ENOMEM. */
int hd_conn_set_client(hd_conn *c, const hd_addr *a, int xff);
/* Checks c's client against limits.max_connections_per_ip and
 * limits.connect_rate_per_ip (a trusted proxy's own address is exempt).
 * Returns 1 when admitted; else 0, counted, with *reason (HD_REFUSE_*) and
 * *retry_s (0 when waiting would not help). */
int hd_conn_admit(hd_conn *c, int *reason, unsigned *retry_s);
/* Frees client addresses no connection uses (the sweeper calls it). */
void hd_net_sweep_peers(hd_net *net);

/* True while c accepts new outbound data. */
static inline int hd_conn_open(const hd_conn *c)
{
    return !(c->flags & (HD_CF_CLOSED | HD_CF_FINISH | HD_CF_WS_CLOSE_SENT | HD_CF_REAP));
}

#endif
