#include "httpc.h"
#include "buf.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Defaults for the limits left 0 (hd_httpc_opts). */
#define DEF_POOL_SIZE 8
#define DEF_MAX_IN_FLIGHT 1024
#define DEF_TIMEOUT_MS 10000
#define DEF_MAX_RESPONSE (1u << 20)
#define DEF_IDLE_MS 4000
#define MAX_METHOD 32
#define MAX_HOST 253 /* the longest DNS name */
#define READ_BUF 65536

/* ---- the response parser ------------------------------------------------------------ */

/* Where one response header lives in resp.hbuf. */
typedef struct hspan {
    uint32_t name, name_len, value, value_len;
} hspan;

/* The response being read on a connection (or by hd_httpc_parse). */
typedef struct resp {
    llhttp_t p;                  /* p.data: this */
    hd_str hbuf;                 /* header names and values, each NUL-terminated */
    hspan h[HD_HTTPC_MAX_HEADERS];
    uint32_t nh;
    hd_str body;                 /* decoded body, NUL-terminated */
    size_t wire;                 /* bytes of this response read so far */
    uint32_t max;                /* max_response_bytes */
    uint8_t head;                /* the request was HEAD: no body */
    uint8_t in_field;            /* a header name is being received */
    uint8_t done;                /* the final response is complete */
    uint8_t keep_alive;          /* llhttp's verdict on the connection, once done */
    int err;                     /* set by a callback that stopped the parse */
    char why[96];                /* the error's message */
} resp;

static resp *resp_of(llhttp_t *p) { return p->data; }

static int resp_fail(resp *r, int err, const char *why)
{
    r->err = err;
    snprintf(r->why, sizeof r->why, "%s", why);
    return HPE_USER;
}

/* Makes room in s for extra more bytes. Growth doubles, as hd_str's does,
 * but never past limit bytes (+1 for the NUL): a response's buffers stay
 * within max_response_bytes, whatever their capacity would round up to. */
static int reserve(hd_str *s, size_t extra, size_t limit)
{
    size_t need = s->len + extra + 1;
    if (need <= s->cap) return 0;
    size_t cap = s->cap ? s->cap * 2 : 256;
    if (cap < need) cap = need;
    if (cap > limit + 1) cap = need > limit + 1 ? need : limit + 1;
    char *p = realloc(s->p, cap);
    if (!p) return HD_ENOMEM;
    p[s->len] = 0;
    s->p = p;
    s->cap = cap;
    return 0;
}

/* Appends to one of r's buffers within the response limit. */
static int resp_add(resp *r, hd_str *s, const char *at, size_t len)
{
    if (s->len + len > r->max) return resp_fail(r, HD_ETOOBIG, "response too large");
    if (reserve(s, len, r->max) || hd_str_add(s, at, len))
        return resp_fail(r, HD_ENOMEM, "out of memory");
    return 0;
}

/* A message begins: the final response, or an interim (1xx) one that is
 * skipped. Either way what an interim one left goes. */
static int on_message_begin(llhttp_t *p)
{
    resp *r = resp_of(p);
    hd_str_reset(&r->hbuf);
    hd_str_reset(&r->body);
    r->nh = 0;
    r->in_field = 0;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    resp *r = resp_of(p);
    if (!r->in_field) {
        if (r->nh == HD_HTTPC_MAX_HEADERS)
            return resp_fail(r, HD_EPROTO, "malformed response: too many headers");
        r->in_field = 1;
        r->h[r->nh].name = (uint32_t)r->hbuf.len;
    }
    size_t from = r->hbuf.len;
    if (resp_add(r, &r->hbuf, at, len)) return HPE_USER;
    for (size_t i = from; i < r->hbuf.len; i++) {
        char ch = r->hbuf.p[i];
        if (ch >= 'A' && ch <= 'Z') r->hbuf.p[i] = (char)(ch + 32);
    }
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    resp *r = resp_of(p);
    hspan *h = &r->h[r->nh];
    h->name_len = (uint32_t)r->hbuf.len - h->name;
    r->in_field = 0;
    if (resp_add(r, &r->hbuf, "", 1)) return HPE_USER;
    h->value = (uint32_t)r->hbuf.len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    resp *r = resp_of(p);
    return resp_add(r, &r->hbuf, at, len) ? HPE_USER : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    resp *r = resp_of(p);
    hspan *h = &r->h[r->nh];
    /* llhttp skips the blanks before a value; those after are not part of
     * it either (RFC 9110 5.5). */
    while (r->hbuf.len > h->value &&
           (r->hbuf.p[r->hbuf.len - 1] == ' ' || r->hbuf.p[r->hbuf.len - 1] == '\t'))
        r->hbuf.len--;
    h->value_len = (uint32_t)r->hbuf.len - h->value;
    r->nh++;
    return resp_add(r, &r->hbuf, "", 1) ? HPE_USER : 0;
}

/* Returns 1 (no body) for the responses that have none whatever their
 * headers say: to HEAD, 1xx, 204 and 304 (RFC 9112 6.3). A known length
 * is checked against the limit at once, and its buffer made. (-1 is this
 * callback's error.) */
static int on_headers_complete(llhttp_t *p)
{
    resp *r = resp_of(p);
    int status = p->status_code;
    int rc = 0;
    if (status == 101) /* (asked for by nobody) */
        rc = resp_fail(r, HD_EPROTO,
                       "malformed response: 101 Switching Protocols to a plain request");
    else if (r->head || status / 100 == 1 || status == 204 || status == 304)
        return 1;
    else if (!(p->flags & F_CONTENT_LENGTH) || (p->flags & F_CHUNKED))
        return 0;
    else if (p->content_length > r->max)
        rc = resp_fail(r, HD_ETOOBIG, "response too large");
    else if (reserve(&r->body, (size_t)p->content_length, r->max))
        rc = resp_fail(r, HD_ENOMEM, "out of memory");
    return rc ? -1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    resp *r = resp_of(p);
    return resp_add(r, &r->body, at, len) ? HPE_USER : 0;
}

/* The end of a message: an interim one is skipped; the final one stops
 * the parse where it ends (bytes after it are not ours). */
static int on_message_complete(llhttp_t *p)
{
    resp *r = resp_of(p);
    if (p->status_code / 100 == 1) return 0;
    r->done = 1;
    r->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static const llhttp_settings_t resp_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Readies r for the response to a request (head: HEAD) within max bytes;
 * keeps the buffers' memory. */
static void resp_init(resp *r, int head, uint32_t max)
{
    llhttp_init(&r->p, HTTP_RESPONSE, &resp_settings);
    r->p.data = r;
    hd_str_reset(&r->hbuf);
    hd_str_reset(&r->body);
    r->nh = 0;
    r->wire = 0;
    r->max = max;
    r->head = (uint8_t)head;
    r->in_field = r->done = r->keep_alive = 0;
    r->err = 0;
    r->why[0] = 0;
}

static void resp_free(resp *r)
{
    hd_str_free(&r->hbuf);
    hd_str_free(&r->body);
}

/* The error llhttp stopped at: a callback's own, or a malformed response. */
static int resp_error(resp *r, llhttp_errno_t e)
{
    if (r->err) return r->err;
    const char *why = llhttp_get_error_reason(&r->p);
    snprintf(r->why, sizeof r->why, "malformed response: %s",
             why && *why ? why : llhttp_errno_name(e));
    return r->err = HD_EPROTO;
}

/* Feeds n bytes read. Returns 1 when the response is complete (*used: the
 * bytes it took; the rest is not the response's), 0 when more is needed,
 * or an error code with r->why. The limit counts bytes as they come, so
 * only what fits is parsed: a response that has not ended within it is
 * too large. */
static int resp_feed(resp *r, const char *d, size_t n, size_t *used)
{
    size_t room = r->max - r->wire, take = n < room ? n : room;
    llhttp_errno_t e = take ? llhttp_execute(&r->p, d, take) : HPE_OK;
    if (r->done) {
        *used = (size_t)(llhttp_get_error_pos(&r->p) - d);
        r->wire += *used;
        return 1;
    }
    if (e != HPE_OK) return resp_error(r, e);
    r->wire += take;
    if (take < n) {
        snprintf(r->why, sizeof r->why, "response too large");
        return r->err = HD_ETOOBIG;
    }
    return 0;
}

/* The server closed the connection. Returns 1 when that ends the response
 * (a body read until the close), else an error code with r->why. */
static int resp_eof(resp *r)
{
    if (!r->wire) {
        snprintf(r->why, sizeof r->why, "connection closed before the response");
        return r->err = HD_ECLOSED;
    }
    llhttp_errno_t e = llhttp_finish(&r->p);
    if (r->done) return 1;
    if (e != HPE_OK && r->err) return r->err;
    snprintf(r->why, sizeof r->why, "connection closed during the response");
    return r->err = HD_ECLOSED;
}

/* Fills res (and hdrs, which it points to) from a complete response. */
static void resp_view(const resp *r, hd_httpc_hdr *hdrs, hd_httpc_res *res)
{
    for (uint32_t i = 0; i < r->nh; i++) {
        const hspan *h = &r->h[i];
        hdrs[i] =
            (hd_httpc_hdr){r->hbuf.p + h->name, r->hbuf.p + h->value, h->name_len, h->value_len};
    }
    res->status = r->p.status_code;
    res->headers = hdrs;
    res->nheaders = r->nh;
    res->body = r->body.p ? r->body.p : "";
    res->body_len = r->body.len;
}

int hd_httpc_parse(const char *const *pieces, const size_t *lens, size_t n, int eof, int head,
                   uint32_t max, void (*cb)(void *ud, const hd_httpc_res *res, int reusable),
                   void *ud, char *msg, size_t msglen)
{
    resp *r = calloc(1, sizeof *r);
    if (!r) return HD_ENOMEM;
    resp_init(r, head, max ? max : DEF_MAX_RESPONSE);
    int rc = 0, extra = 0;
    size_t i = 0, used = 0;
    for (; i < n && rc == 0; i++) rc = resp_feed(r, pieces[i], lens[i], &used);
    if (rc == 1) {
        extra = used < lens[i - 1];
        for (; i < n; i++) extra |= lens[i] > 0;
    } else if (rc == 0 && eof) {
        rc = resp_eof(r);
    }
    if (rc == 1) {
        hd_httpc_hdr hdrs[HD_HTTPC_MAX_HEADERS];
        hd_httpc_res res;
        resp_view(r, hdrs, &res);
        if (cb) cb(ud, &res, r->keep_alive && !extra);
        rc = 0;
    } else if (rc == 0) {
        rc = 1;
    } else if (msglen) {
        snprintf(msg, msglen, "%s", r->why);
    }
    resp_free(r);
    free(r);
    return rc;
}

/* ---- the client's state ------------------------------------------------------------- */

typedef struct origin origin;

/* A connection's state. */
enum {
    C_RESOLVING,                 /* the origin's name is being resolved */
    C_CONNECTING,                /* a TCP connect to one of its addresses is in progress */
    C_BUSY,                      /* serving its call: writing the request, reading the response */
    C_IDLE,                      /* kept for reuse, reading (to see a close) */
    C_CLOSING,                   /* out of its origin; freed once its handle and resolution end */
};

/* A connection's flags. */
enum {
    C_TCP = 1 << 0,              /* the tcp handle is initialised and not closing */
    C_RESOLVE = 1 << 1,          /* a uv_getaddrinfo is pending */
    C_REDIAL = 1 << 2,           /* the handle is closing to try the next address */
};

typedef union sockaddr_any {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} sockaddr_any;

typedef struct conn {
    uv_tcp_t tcp;                /* tcp.data: this */
    uv_getaddrinfo_t gai;        /* gai.data: this */
    uv_connect_t creq;           /* creq.data: this */
    uv_write_t wreq;             /* wreq.data: this */
    hd_httpc *hc;
    origin *o;                   /* NULL once closing */
    hd_httpc_call *call;         /* the call it serves while busy (or resolving, connecting) */
    struct conn *prev, *next;    /* hc->conns: every connection not yet freed */
    struct conn *iprev, *inext;  /* o->idle, most recently used first (while idle) */
    struct conn *lprev, *lnext;  /* hc->lru_head, most recently idle first (while idle) */
    uint64_t idle_since;         /* loop time it went idle */
    hd_buf *wbuf;                /* the request being written (a reference), or NULL */
    uint32_t uses;               /* responses completed on it */
    uint8_t state;               /* C_* state */
    uint8_t flags;               /* C_* flags */
    uint8_t naddr, next_addr;    /* addresses to try, and the next one */
    sockaddr_any addr[HD_HTTPC_MAX_ADDRS];
    resp r;                      /* the response being read */
} conn;

/* The pool and queue of one host:port. */
struct origin {
    origin *prev, *next;         /* hc->origins */
    hd_httpc *hc;
    uint32_t hash;               /* of host and port */
    uint16_t port;
    uint8_t v6;                  /* host is an IPv6 address (written in brackets) */
    uint8_t literal;             /* host is an IP address: nothing to resolve */
    uint8_t pumping;             /* pump() is running: a nested call returns at once */
    uint32_t nconns;             /* connections not closing */
    uint32_t nidle;              /* of which idle */
    conn *idle;                  /* idle connections, most recently used first */
    hd_httpc_call *qhead, *qtail;/* calls waiting for a connection, oldest first */
    size_t host_len;
    char host[];                 /* lower-cased, without brackets, NUL-terminated */
};

struct hd_httpc_call {
    uv_timer_t timer;            /* the deadline, or a failure to deliver (at 0 ms); data: this */
    hd_httpc *hc;
    origin *o;                   /* its origin while it waits in the queue */
    conn *c;                     /* its connection while it has one */
    hd_httpc_call *prev, *next;  /* hc->calls, until finished or cancelled */
    hd_httpc_call *qprev, *qnext;/* o's queue */
    hd_httpc_cb *cb;
    void *ud;
    hd_buf *req;                 /* the request's bytes (one reference) */
    int err;                     /* a failure waiting for the timer to deliver it, or 0 */
    uint8_t head;                /* a HEAD request */
    uint8_t retried;             /* sent again already on a new connection */
    uint8_t done;                /* delivered or cancelled: only the timer's close is left */
    char msg[32 + MAX_HOST];     /* the failure's message */
};

struct hd_httpc {
    uv_loop_t *loop;
    hd_httpc_opts o;
    hd_httpc_stats st;
    uv_timer_t idle_timer;       /* closes the idle connections whose time is up */
    origin *origins;
    uint32_t norigins;
    conn *conns;
    conn *lru_head, *lru_tail;   /* idle connections, most recently idle first */
    hd_httpc_call *calls;        /* calls not finished nor cancelled */
    size_t live;                 /* the idle timer, call timers and connections not yet freed */
    int freeing;                 /* hd_httpc_free ran: hc goes when live reaches 0 */
    void (*done)(void *ud);
    void *done_ud;
    char rbuf[READ_BUF];         /* every read lands here (reads never nest) */
};

/* The client's lists of origins, connections and calls: x goes in at the
 * head, or out, of the list at head through its prev and next fields. */
#define LIST_PUSH(head, x)                                                                         \
    do {                                                                                           \
        (x)->prev = NULL;                                                                          \
        (x)->next = (head);                                                                        \
        if (head) (head)->prev = (x);                                                              \
        (head) = (x);                                                                              \
    } while (0)
#define LIST_UNLINK(head, x)                                                                       \
    do {                                                                                           \
        if ((x)->prev) (x)->prev->next = (x)->next;                                                \
        else (head) = (x)->next;                                                                   \
        if ((x)->next) (x)->next->prev = (x)->prev;                                                \
    } while (0)

static void pump(origin *o);
static void conn_new(origin *o, hd_httpc_call *k);
static void dial(conn *c);
static void send_request(conn *c);
static void on_call_timer(uv_timer_t *t);
static void on_idle_timer(uv_timer_t *t);

/* One handle or resolution of hc finished; the last one after
 * hd_httpc_free() frees hc. */
static void hc_release(hd_httpc *hc)
{
    if (--hc->live || !hc->freeing) return;
    void (*done)(void *) = hc->done;
    void *ud = hc->done_ud;
    free(hc);
    if (done) done(ud);
}

static const char *error_text(int err)
{
    return err == UV_ECONNREFUSED ? "connection refused"
           : err == UV_ETIMEDOUT  ? "timeout"
                                  : hd_strerror(err);
}

/* ---- calls -------------------------------------------------------------------------- */

static void on_call_closed(uv_handle_t *h)
{
    hd_httpc_call *k = h->data;
    hd_httpc *hc = k->hc;
    hd_buf_unref(k->req);
    free(k);
    hc_release(hc);
}

/* The call is over (delivered or cancelled): it leaves the client's list
 * and the count in flight; its memory goes with its timer's close. */
static void call_release(hd_httpc_call *k)
{
    hd_httpc *hc = k->hc;
    k->done = 1;
    LIST_UNLINK(hc->calls, k);
    hc->st.in_flight--;
    uv_close((uv_handle_t *)&k->timer, on_call_closed);
}

/* Runs the call's callback, last: the callback may do anything with the
 * client (even free it), so nothing may touch the client after this. */
static void deliver(hd_httpc_call *k, int err, const char *msg, const hd_httpc_res *res)
{
    hd_httpc_cb *cb = k->cb;
    void *ud = k->ud;
    if (err) k->hc->st.errors++;
    if (err == UV_ETIMEDOUT) k->hc->st.timeouts++;
    call_release(k);
    cb(ud, err, msg, res);
}

/* The call failed (it is on no queue and no connection): its timer
 * delivers the error on the next loop turn, so that a failure found while
 * starting a request is never reported from inside hd_httpc_request. */
static void fail(hd_httpc_call *k, int err, const char *msg)
{
    k->err = err;
    snprintf(k->msg, sizeof k->msg, "%s", msg ? msg : error_text(err));
    uv_timer_start(&k->timer, on_call_timer, 0, 0);
}

static void enqueue(origin *o, hd_httpc_call *k)
{
    k->o = o;
    k->qnext = NULL;
    k->qprev = o->qtail;
    if (o->qtail) o->qtail->qnext = k;
    else o->qhead = k;
    o->qtail = k;
}

static void unqueue(hd_httpc_call *k)
{
    origin *o = k->o;
    if (k->qprev) k->qprev->qnext = k->qnext;
    else o->qhead = k->qnext;
    if (k->qnext) k->qnext->qprev = k->qprev;
    else o->qtail = k->qprev;
    k->o = NULL;
    k->qprev = k->qnext = NULL;
}

static void attach(conn *c, hd_httpc_call *k)
{
    c->call = k;
    k->c = c;
}

static void detach(conn *c)
{
    if (c->call) c->call->c = NULL;
    c->call = NULL;
}

/* ---- connections -------------------------------------------------------------------- */

static void idle_unlink(conn *c)
{
    hd_httpc *hc = c->hc;
    origin *o = c->o;
    if (c->iprev) c->iprev->inext = c->inext;
    else o->idle = c->inext;
    if (c->inext) c->inext->iprev = c->iprev;
    if (c->lprev) c->lprev->lnext = c->lnext;
    else hc->lru_head = c->lnext;
    if (c->lnext) c->lnext->lprev = c->lprev;
    else hc->lru_tail = c->lprev;
    c->iprev = c->inext = c->lprev = c->lnext = NULL;
    o->nidle--;
}

static void conn_free(conn *c)
{
    hd_httpc *hc = c->hc;
    LIST_UNLINK(hc->conns, c);
    hd_buf_unref(c->wbuf);
    resp_free(&c->r);
    free(c);
    hc_release(hc);
}

/* The handle closed: the connection goes, or (redialling) tries its next
 * address. */
static void on_tcp_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->flags &= (uint8_t)~C_REDIAL;
    if (c->state == C_CLOSING) conn_free(c);
    else dial(c);
}

/* Takes c out of its origin (its call, if any, must have been detached)
 * and closes it; memory goes once its handle closed and its resolution (if
 * pending) returned. Does not pump the origin: the caller does. */
static void conn_close(conn *c)
{
    if (c->state == C_CLOSING) return;
    if (c->state == C_IDLE) idle_unlink(c);
    c->o->nconns--;
    c->o = NULL;
    c->hc->st.open_conns--;
    c->state = C_CLOSING;
    if (c->flags & C_TCP) {
        c->flags &= (uint8_t)~C_TCP;
        uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
    } else if (c->flags & C_RESOLVE) {
        uv_cancel((uv_req_t *)&c->gai); /* (best effort: on_resolved frees it either way) */
    } else if (!(c->flags & C_REDIAL)) {
        conn_free(c);
    }
}

/* The connection's call failed with err: a request on a reused connection
 * that the server closed before answering is sent again on a new one
 * (once); otherwise the call gets the error. The connection is closed. */
static void conn_failed(conn *c, int err, const char *msg)
{
    hd_httpc_call *k = c->call;
    origin *o = c->o;
    int stale = c->uses && !c->r.wire && !k->retried &&
                (err == HD_ECLOSED || err == UV_EOF || err == UV_ECONNRESET || err == UV_EPIPE);
    detach(c);
    conn_close(c);
    if (stale) {
        hd_debug("http client: %s:%u closed a kept connection; sending the request again", o->host,
                 (unsigned)o->port);
        k->retried = 1;
        /* (a new connection may fail at once and pump o, which could free
         * it under us: held as pump holds it) */
        uint8_t was = o->pumping;
        o->pumping = 1;
        conn_new(o, k);
        o->pumping = was;
    } else {
        fail(k, err, msg);
    }
    pump(o);
}

static void go_idle(conn *c)
{
    hd_httpc *hc = c->hc;
    origin *o = c->o;
    c->state = C_IDLE;
    c->idle_since = uv_now(hc->loop);
    c->iprev = c->lprev = NULL;
    c->inext = o->idle;
    if (o->idle) o->idle->iprev = c;
    o->idle = c;
    o->nidle++;
    c->lnext = hc->lru_head;
    if (hc->lru_head) hc->lru_head->lprev = c;
    else hc->lru_tail = c;
    hc->lru_head = c;
    /* A running timer is due for an older connection, which goes first. */
    if (!uv_is_active((uv_handle_t *)&hc->idle_timer))
        uv_timer_start(&hc->idle_timer, on_idle_timer, hc->o.idle_ms, 0);
}

/* The final response is complete: the call gets it, and the connection
 * goes back to the pool (reusable) or is closed. The response's buffers
 * are taken from the connection first, so that the pool may hand it to a
 * waiting call (or the callback start one) while they are still read. */
static void complete(conn *c, int reusable)
{
    hd_httpc *hc = c->hc;
    hd_httpc_call *k = c->call;
    origin *o = c->o;
    hd_httpc_hdr hdrs[HD_HTTPC_MAX_HEADERS];
    hd_httpc_res res;
    resp_view(&c->r, hdrs, &res);
    hd_str hbuf = c->r.hbuf, body = c->r.body;
    c->r.hbuf = (hd_str)HD_STR_INIT;
    c->r.body = (hd_str)HD_STR_INIT;
    detach(c);
    c->uses++;
    if (reusable && !c->wbuf && !hc->freeing) go_idle(c);
    else conn_close(c);
    pump(o);
    deliver(k, 0, NULL, &res);
    hd_str_free(&hbuf);
    hd_str_free(&body);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = h->data;
    *buf = uv_buf_init(c->hc->rbuf, sizeof c->hc->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn *c = s->data;
    if (n == 0 || c->state == C_CLOSING) return;
    if (n > 0) c->hc->st.bytes_read += (uint64_t)n;
    if (c->state == C_IDLE) {
        /* The server closed a kept connection, or sent what nobody asked
         * for: either way it cannot carry the next request. */
        origin *o = c->o;
        conn_close(c);
        pump(o);
        return;
    }
    size_t used = 0;
    int rc = (int)n; /* (a read error) */
    if (n > 0) rc = resp_feed(&c->r, buf->base, (size_t)n, &used);
    else if (n == UV_EOF) rc = resp_eof(&c->r);
    if (rc == 0) return;
    if (rc == 1) complete(c, n > 0 && used == (size_t)n && c->r.keep_alive);
    else conn_failed(c, rc, rc == (int)n ? NULL : c->r.why);
}

static void on_written(uv_write_t *req, int status)
{
    conn *c = req->data;
    hd_buf_unref(c->wbuf);
    c->wbuf = NULL;
    if (status < 0 && status != UV_ECANCELED && c->state == C_BUSY && c->call)
        conn_failed(c, status, NULL);
}

/* Sends c's call's request (c is connected and reading). */
static void send_request(conn *c)
{
    hd_httpc_call *k = c->call;
    resp_init(&c->r, k->head, c->hc->o.max_response_bytes);
    if (c->uses) c->hc->st.reused++;
    uv_buf_t b = uv_buf_init((char *)k->req->data, k->req->len);
    c->wbuf = hd_buf_ref(k->req);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc) {
        hd_buf_unref(c->wbuf);
        c->wbuf = NULL;
        conn_failed(c, rc, NULL);
    }
}

/* Whether a failed connect may try the origin's next address. */
static int try_next(int err)
{
    return err == UV_ECONNREFUSED || err == UV_ENETUNREACH || err == UV_EHOSTUNREACH ||
           err == UV_EADDRNOTAVAIL || err == UV_EAFNOSUPPORT;
}

static void dial_failed(conn *c, int err)
{
    if (c->next_addr < c->naddr && try_next(err)) {
        if (c->flags & C_TCP) { /* (a new handle for the next address, once this one closed) */
            c->flags = (uint8_t)((c->flags & ~C_TCP) | C_REDIAL);
            uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
        } else {
            dial(c);
        }
        return;
    }
    conn_failed(c, err, NULL);
}

static void on_connected(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (status == UV_ECANCELED || c->state == C_CLOSING) return;
    if (status < 0) return dial_failed(c, status);
    c->hc->st.connects++;
    c->state = C_BUSY;
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) return conn_failed(c, rc, NULL);
    send_request(c);
}

/* Connects to c's next address. */
static void dial(conn *c)
{
    const struct sockaddr *sa = &c->addr[c->next_addr++].sa;
    c->state = C_CONNECTING;
    int rc = uv_tcp_init(c->hc->loop, &c->tcp);
    if (rc) return dial_failed(c, rc);
    c->tcp.data = c;
    c->flags |= C_TCP;
    c->creq.data = c;
    rc = uv_tcp_connect(&c->creq, &c->tcp, sa, on_connected);
    if (rc) dial_failed(c, rc);
}

static void resolve_failed(conn *c, int err)
{
    char msg[sizeof c->call->msg];
    snprintf(msg, sizeof msg, "cannot resolve host %s", c->o->host);
    conn_failed(c, err, msg);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai)
{
    conn *c = req->data;
    c->flags &= (uint8_t)~C_RESOLVE;
    if (c->state == C_CLOSING) {
        uv_freeaddrinfo(ai);
        conn_free(c);
        return;
    }
    for (struct addrinfo *a = status ? NULL : ai; a && c->naddr < HD_HTTPC_MAX_ADDRS;
         a = a->ai_next) {
        sockaddr_any *x = &c->addr[c->naddr];
        if (a->ai_family == AF_INET && a->ai_addrlen >= sizeof x->in)
            memcpy(&x->in, a->ai_addr, sizeof x->in);
        else if (a->ai_family == AF_INET6 && a->ai_addrlen >= sizeof x->in6)
            memcpy(&x->in6, a->ai_addr, sizeof x->in6);
        else continue;
        c->naddr++;
    }
    uv_freeaddrinfo(ai);
    if (c->naddr) dial(c);
    else resolve_failed(c, status ? status : UV_EAI_NODATA);
}

/* Opens a new connection of o for call k (o has room for it). */
static void conn_new(origin *o, hd_httpc_call *k)
{
    hd_httpc *hc = o->hc;
    conn *c = calloc(1, sizeof *c);
    if (!c) return fail(k, HD_ENOMEM, "out of memory");
    c->hc = hc;
    c->o = o;
    LIST_PUSH(hc->conns, c);
    hc->live++;
    hc->st.open_conns++;
    o->nconns++;
    attach(c, k);
    resp_init(&c->r, k->head, hc->o.max_response_bytes);
    if (o->literal) {
        c->naddr = 1;
        if (o->v6) uv_ip6_addr(o->host, o->port, &c->addr[0].in6);
        else uv_ip4_addr(o->host, o->port, &c->addr[0].in);
        return dial(c);
    }
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)o->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV;
    c->state = C_RESOLVING;
    c->gai.data = c;
    c->flags |= C_RESOLVE;
    int rc = uv_getaddrinfo(hc->loop, &c->gai, on_resolved, o->host, port, &hints);
    if (rc) {
        c->flags &= (uint8_t)~C_RESOLVE;
        resolve_failed(c, rc);
    }
}

/* ---- origins ------------------------------------------------------------------------ */

static void origin_free(origin *o)
{
    hd_httpc *hc = o->hc;
    LIST_UNLINK(hc->origins, o);
    hc->norigins--;
    free(o);
}

/* Hands o's waiting calls to its idle connections (most recently used
 * first) and to new ones while the pool has room; then drops o if it has
 * neither connections nor calls. o may be gone on return. */
static void pump(origin *o)
{
    hd_httpc *hc = o->hc;
    if (hc->freeing || o->pumping) return;
    o->pumping = 1;
    hd_httpc_call *k;
    while ((k = o->qhead)) {
        conn *c = o->idle;
        if (!c && o->nconns >= hc->o.pool_size) break;
        unqueue(k);
        if (!c) {
            conn_new(o, k);
            continue;
        }
        idle_unlink(c);
        c->state = C_BUSY;
        attach(c, k);
        send_request(c);
    }
    o->pumping = 0;
    if (!o->nconns && !o->qhead) origin_free(o);
}

/* Over the limit of origins: the one idle the longest, with no call
 * waiting and every connection idle, goes. Returns 0, or -1 when every
 * origin is in use. */
static int evict_origin(hd_httpc *hc)
{
    origin *best = NULL;
    uint64_t best_since = 0;
    for (origin *o = hc->origins; o; o = o->next) {
        uint64_t since = o->idle ? o->idle->idle_since : 0; /* (the most recent use) */
        if (!o->qhead && o->nidle == o->nconns && (!best || since < best_since))
            best = o, best_since = since;
    }
    if (!best) return -1;
    while (best->idle) conn_close(best->idle);
    pump(best);
    return 0;
}

/* The origin of host:port, found or made. Returns NULL with the reason in
 * *msg. */
static origin *origin_get(hd_httpc *hc, const char *host, size_t len, uint16_t port, int v6,
                          const char **msg)
{
    char key[MAX_HOST + 1];
    for (size_t i = 0; i < len; i++)
        key[i] = (char)(host[i] >= 'A' && host[i] <= 'Z' ? host[i] + 32 : host[i]);
    key[len] = 0;
    uint32_t hash = hd_fnv1a(key, len) ^ port;
    for (origin *o = hc->origins; o; o = o->next)
        if (o->hash == hash && o->port == port && o->host_len == len && !memcmp(o->host, key, len))
            return o;
    if (hc->norigins >= HD_HTTPC_MAX_ORIGINS && evict_origin(hc)) {
        *msg = "too many backends in use";
        return NULL;
    }
    origin *o = calloc(1, sizeof *o + len + 1);
    if (!o) {
        *msg = "out of memory";
        return NULL;
    }
    o->hc = hc;
    o->hash = hash;
    o->port = port;
    o->v6 = (uint8_t)v6;
    memcpy(o->host, key, len + 1);
    o->host_len = len;
    unsigned char tmp[16];
    o->literal = (uint8_t)(v6 || uv_inet_pton(AF_INET, o->host, tmp) == 0);
    LIST_PUSH(hc->origins, o);
    hc->norigins++;
    return o;
}

/* ---- timers ------------------------------------------------------------------------- */

/* Takes k off whatever it was on: its connection, mid-request, is closed
 * (never reused), or it leaves its origin's queue. Returns the origin, to
 * pump, or NULL. */
static origin *abandon(hd_httpc_call *k)
{
    origin *o = k->o;
    if (k->c) {
        conn *c = k->c;
        o = c->o;
        detach(c);
        conn_close(c);
    } else if (o) {
        unqueue(k);
    }
    return o;
}

/* The call's timer: a failure to deliver, or its deadline. */
static void on_call_timer(uv_timer_t *t)
{
    hd_httpc_call *k = t->data;
    if (k->err) return deliver(k, k->err, k->msg, NULL);
    origin *o = abandon(k);
    if (o) pump(o);
    deliver(k, UV_ETIMEDOUT, "timeout", NULL);
}

static void on_idle_timer(uv_timer_t *t)
{
    hd_httpc *hc = t->data;
    uint64_t now = uv_now(hc->loop);
    conn *c;
    while ((c = hc->lru_tail) && c->idle_since + hc->o.idle_ms <= now) {
        origin *o = c->o;
        conn_close(c);
        pump(o);
    }
    if (c) uv_timer_start(&hc->idle_timer, on_idle_timer, c->idle_since + hc->o.idle_ms - now, 0);
}

static void on_idle_closed(uv_handle_t *h) { hc_release(h->data); }

/* ---- the request -------------------------------------------------------------------- */

static int say(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int say(char *err, size_t errlen, const char *fmt, ...)
{
    if (errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* What a URL names. */
typedef struct url {
    const char *host;            /* without brackets */
    size_t host_len;
    int v6;                      /* host is an IPv6 address */
    uint16_t port;
    const char *target;          /* path and query: "" or from '/' or '?' on */
    size_t target_len;
} url;

/* Parses "http://host[:port][/path][?query][#fragment]" into u. Returns 0,
 * or -1 with the reason in err. */
static int parse_url(const char *s, size_t n, url *u, char *err, size_t errlen)
{
    if (!s || !n) return say(err, errlen, "malformed URL: empty");
    if (n > HD_HTTPC_MAX_URL)
        return say(err, errlen, "malformed URL: over %d bytes", HD_HTTPC_MAX_URL);
    if (n < 7 || !hd_strieq(s, 7, "http://"))
        return say(err, errlen, "only http:// URLs are supported");
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)s[i] <= 0x20 || (uint8_t)s[i] >= 0x7f)
            return say(err, errlen,
                       "malformed URL: a space, control or non-ASCII byte (percent-encode it)");
    const char *p = s + 7, *end = s + n, *hash = memchr(p, '#', (size_t)(end - p));
    if (hash) end = hash;
    const char *ae = p;
    while (ae < end && *ae != '/' && *ae != '?') ae++;
    if (memchr(p, '@', (size_t)(ae - p)))
        return say(err, errlen, "malformed URL: user info is not supported");
    memset(u, 0, sizeof *u);
    hd_authority au;
    const char *why = hd_authority_parse(p, (size_t)(ae - p), &au);
    if (why) return say(err, errlen, "malformed URL: %s", why);
    u->host = au.host;
    u->host_len = au.host_len;
    u->v6 = au.v6;
    u->port = au.port ? (uint16_t)au.port : 80;
    u->target = ae;
    u->target_len = (size_t)(end - ae);
    return 0;
}

/* RFC 9110 5.6.2: a token's characters. */
static int tchar(uint8_t ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int is_token(const char *s, size_t n)
{
    if (!n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!tchar((uint8_t)s[i])) return 0;
    return 1;
}

/* The headers that frame the message or the connection: ours only. */
static const char *const framing[] = {
    "content-length", "transfer-encoding", "connection", "keep-alive",
    "upgrade",        "proxy-connection",  "te"};

/* Checks the caller's headers. Returns 0 (*has_host: one is Host), or -1
 * with the reason in err. */
static int check_headers(const hd_httpc_req *rq, int *has_host, char *err, size_t errlen)
{
    *has_host = 0;
    if (rq->nheaders && !rq->headers) return say(err, errlen, "bad request headers");
    for (size_t i = 0; i < rq->nheaders; i++) {
        const hd_httpc_hdr *h = &rq->headers[i];
        int nl = h->name_len > 64 ? 64 : (int)h->name_len;
        if (!h->name || !is_token(h->name, h->name_len))
            return say(err, errlen, "bad request header name");
        for (size_t j = 0; j < h->value_len; j++) {
            uint8_t ch = (uint8_t)h->value[j];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return say(err, errlen, "bad value of request header %.*s (control character)", nl,
                           h->name);
        }
        for (size_t f = 0; f < sizeof framing / sizeof framing[0]; f++)
            if (hd_strieq(h->name, h->name_len, framing[f]))
                return say(err, errlen, "request header %.*s is not allowed (herald sets it)", nl,
                           h->name);
        if (hd_strieq(h->name, h->name_len, "host")) *has_host = 1;
    }
    return 0;
}

/* Encodes the request (head, then body) into one buffer. Returns it, or
 * NULL when out of memory. */
static hd_buf *encode(const hd_httpc_req *rq, const url *u, int has_host)
{
    hd_str s = HD_STR_INIT;
    hd_str_printf(&s, "%s ", rq->method);
    if (!u->target_len || u->target[0] == '?') hd_str_addc(&s, '/');
    hd_str_add(&s, u->target, u->target_len);
    hd_str_adds(&s, " HTTP/1.1\r\n");
    if (!has_host) {
        hd_str_printf(&s, u->v6 ? "Host: [%.*s]" : "Host: %.*s", (int)u->host_len, u->host);
        if (u->port != 80) hd_str_printf(&s, ":%u", (unsigned)u->port);
        hd_str_adds(&s, "\r\n");
    }
    for (size_t i = 0; i < rq->nheaders; i++) {
        const hd_httpc_hdr *h = &rq->headers[i];
        hd_str_add(&s, h->name, h->name_len);
        hd_str_adds(&s, ": ");
        hd_str_add(&s, h->value, h->value_len);
        hd_str_adds(&s, "\r\n");
    }
    const char *m = rq->method;
    if (rq->body || !strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH"))
        hd_str_printf(&s, "Content-Length: %zu\r\n", rq->body ? rq->body_len : 0);
    hd_str_adds(&s, "Connection: keep-alive\r\n\r\n");
    size_t body = rq->body ? rq->body_len : 0;
    hd_buf *b = s.oom || s.len + body > UINT32_MAX ? NULL : hd_buf_new(s.len + body);
    if (b) {
        memcpy(b->data, s.p, s.len);
        if (body) memcpy(b->data + s.len, rq->body, body);
    }
    hd_str_free(&s);
    return b;
}

hd_httpc_call *hd_httpc_request(hd_httpc *hc, const hd_httpc_req *rq, hd_httpc_cb *cb, void *ud,
                                char *err, size_t errlen)
{
    url u;
    int has_host;
    const char *msg = NULL;
    if (hc->freeing) return say(err, errlen, "the HTTP client is shutting down"), NULL;
    if (hc->st.in_flight >= hc->o.max_in_flight)
        return say(err, errlen, "too many requests in flight (scripts.http.max_in_flight)"), NULL;
    if (parse_url(rq->url, rq->url_len, &u, err, errlen)) return NULL;
    size_t ml = rq->method ? strlen(rq->method) : 0;
    if (!is_token(rq->method, ml) || ml > MAX_METHOD) return say(err, errlen, "bad method"), NULL;
    if (!strcmp(rq->method, "CONNECT"))
        return say(err, errlen, "method CONNECT is not supported"), NULL;
    if (check_headers(rq, &has_host, err, errlen)) return NULL;
    if (rq->body && rq->body_len > HD_HTTPC_MAX_BODY)
        return say(err, errlen, "request body too large"), NULL;
    hd_httpc_call *k = calloc(1, sizeof *k);
    if (k) k->req = encode(rq, &u, has_host);
    origin *o = k && k->req ? origin_get(hc, u.host, u.host_len, u.port, u.v6, &msg) : NULL;
    if (!o) {
        if (k) hd_buf_unref(k->req);
        free(k);
        return say(err, errlen, "%s", msg ? msg : "out of memory"), NULL;
    }
    k->hc = hc;
    k->cb = cb;
    k->ud = ud;
    k->head = !strcmp(rq->method, "HEAD");
    uv_timer_init(hc->loop, &k->timer);
    k->timer.data = k;
    uv_timer_start(&k->timer, on_call_timer, rq->timeout_ms ? rq->timeout_ms : hc->o.timeout_ms, 0);
    LIST_PUSH(hc->calls, k);
    hc->live++;
    hc->st.in_flight++;
    hc->st.requests++;
    enqueue(o, k);
    pump(o);
    return k;
}

void hd_httpc_cancel(hd_httpc_call *k)
{
    if (!k || k->done) return;
    origin *o = abandon(k);
    call_release(k);
    if (o) pump(o);
}

/* ---- the client --------------------------------------------------------------------- */

hd_httpc *hd_httpc_new(uv_loop_t *loop, const hd_httpc_opts *o)
{
    hd_httpc *hc = calloc(1, sizeof *hc);
    if (!hc) return NULL;
    hc->loop = loop;
    if (o) hc->o = *o;
    if (!hc->o.pool_size) hc->o.pool_size = DEF_POOL_SIZE;
    if (!hc->o.max_in_flight) hc->o.max_in_flight = DEF_MAX_IN_FLIGHT;
    if (!hc->o.timeout_ms) hc->o.timeout_ms = DEF_TIMEOUT_MS;
    if (!hc->o.max_response_bytes) hc->o.max_response_bytes = DEF_MAX_RESPONSE;
    if (!hc->o.idle_ms) hc->o.idle_ms = DEF_IDLE_MS;
    uv_timer_init(loop, &hc->idle_timer);
    hc->idle_timer.data = hc;
    uv_unref((uv_handle_t *)&hc->idle_timer);
    hc->live = 1;
    return hc;
}

const hd_httpc_stats *hd_httpc_stats_of(const hd_httpc *hc) { return &hc->st; }

void hd_httpc_free(hd_httpc *hc, void (*done)(void *ud), void *ud)
{
    if (!hc || hc->freeing) return;
    hc->freeing = 1;
    hc->done = done;
    hc->done_ud = ud;
    while (hc->calls) hd_httpc_cancel(hc->calls);
    for (conn *c = hc->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
    while (hc->origins) origin_free(hc->origins);
    uv_close((uv_handle_t *)&hc->idle_timer, on_idle_closed);
}
