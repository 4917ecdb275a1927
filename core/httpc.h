/* An HTTP/1.1 client on the loop, for Lua hooks that wait for a backend
 * (herald.http.request, the way OpenResty's cosockets do): non-blocking
 * name resolution, a keep-alive pool per origin, one deadline per request,
 * and responses parsed by llhttp within a byte limit.
 *
 * A call goes through: queued at its origin (host:port) until a connection
 * of the origin's pool is free; resolving (a host name, on libuv's thread
 * pool; literal IPv4 and [IPv6] addresses skip it) and connecting, for a
 * new connection; writing the request; reading the response. The call's
 * deadline (a uv_timer) covers all of it. Its callback runs exactly once,
 * from the loop, never from inside hd_httpc_request(), unless the call is
 * cancelled first (then never).
 *
 * Connections. An origin has at most pool_size of them, busy and idle;
 * requests beyond wait in its FIFO queue. An idle connection is reused most
 * recently used first, keeps a read going (a server closing it, or sending
 * bytes nobody asked for, closes it at once), and is closed after idle_ms.
 * A connection is not reused after a response that said Connection: close
 * (or an HTTP/1.0 one without keep-alive), a body read until the close, a
 * response that came while the request was still being written, or bytes
 * after the end of the response; nor after any error, timeout or cancel.
 * A request sent on a reused connection that the server closes (EOF,
 * ECONNRESET, EPIPE) before the first byte of the response is sent again,
 * once, on a new connection: the server dropped an idle connection under
 * us. At most HD_HTTPC_MAX_ORIGINS origins are kept; one with neither
 * connections nor waiting requests is dropped at once, and a new origin
 * over the limit evicts one whose connections are all idle.
 *
 * Addresses. A name resolves to a list (up to HD_HTTPC_MAX_ADDRS, in the
 * resolver's order); a connection tries them in turn while an attempt is
 * refused or the address is unusable (no route, no such family, not
 * available): "localhost" may give ::1 first. The last attempt's error is
 * the call's.
 *
 * The request sent: "METHOD path HTTP/1.1", Host (from the URL: host, and
 * :port when it is not 80; a Host header of the caller's replaces it, for
 * virtual hosts), the caller's headers in their order, Content-Length when
 * there is a body or the method is POST, PUT or PATCH, and Connection:
 * keep-alive. The caller may not set the headers that frame the message or
 * the connection (Content-Length, Transfer-Encoding, Connection,
 * Keep-Alive, Upgrade, Proxy-Connection, TE): they are refused, since a
 * wrong one would desynchronise the pooled connection.
 *
 * Errors: every error code is an HD_E* or UV_E* code (hd_strerror), with a
 * short message for the client of the script:
 *   UV_ETIMEDOUT   "timeout"
 *   UV_ECONNREFUSED "connection refused"
 *   UV_EAI_*       "cannot resolve host <host>"
 *   HD_ETOOBIG     "response too large"
 *   HD_EPROTO      "malformed response: <llhttp's reason>" (also "... too many headers")
 *   HD_ECLOSED     "connection closed before the response",
 *                  "connection closed during the response"
 *   HD_ENOMEM      "out of memory"
 *   HD_ELIMIT      "too many backends in use" (origins; see above)
 *   other UV_E*    uv_strerror()'s text
 *
 * No globals: everything hangs off an hd_httpc. Single-threaded, like the
 * loop. */
#ifndef HD_HTTPC_H
#define HD_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define HD_HTTPC_MAX_HEADERS 100     /* response headers; more: "malformed response: too many..." */
#define HD_HTTPC_MAX_ORIGINS 256     /* origins kept at once */
#define HD_HTTPC_MAX_ADDRS 8         /* addresses of a name tried in turn */
#define HD_HTTPC_MAX_URL 8192        /* longest URL accepted */
#define HD_HTTPC_MAX_BODY (1u << 30) /* largest request body accepted */

typedef struct hd_httpc hd_httpc;           /* the client: pools per origin */
typedef struct hd_httpc_call hd_httpc_call; /* one request in progress */

/* Limits. A field left 0 takes the default in brackets. */
typedef struct hd_httpc_opts {
    uint32_t pool_size;          /* connections per origin (host:port), busy + idle [8] */
    uint32_t max_in_flight;      /* requests accepted and not finished, node-wide; over it:
                                    refused [1024] */
    uint32_t timeout_ms;         /* default per-request deadline (connect + send + whole
                                    response) [10000] */
    uint32_t max_response_bytes; /* status line + headers + body as read (chunk framing and 1xx
                                    interim responses count); over it: "response too large"
                                    [1 MiB] */
    uint32_t idle_ms;            /* an idle keep-alive connection is closed after this [4000:
                                    Node's server drops idle ones at 5 s] */
} hd_httpc_opts;

/* A header: name_len bytes at name, value_len bytes at value. */
typedef struct hd_httpc_hdr {
    const char *name, *value;
    size_t name_len, value_len;
} hd_httpc_hdr;

typedef struct hd_httpc_req {
    const char *method;          /* "GET", "POST", ... (NUL-terminated; a token of 1-32 bytes;
                                    not CONNECT) */
    const char *url;             /* "http://host[:port][/path][?query][#fragment]"; host a name,
                                    IPv4, or [IPv6]; the fragment is not sent */
    size_t url_len;
    const hd_httpc_hdr *headers; /* extra request headers: name a token, value without CR, LF,
                                    NUL or other control bytes but HTAB */
    size_t nheaders;
    const char *body;            /* may be NULL (no body) */
    size_t body_len;
    uint32_t timeout_ms;         /* 0: opts.timeout_ms */
} hd_httpc_req;

typedef struct hd_httpc_res {
    int status;
    const hd_httpc_hdr *headers; /* names lower-cased, values without surrounding blanks, in the
                                    order received (each NUL-terminated too); valid during the
                                    callback only */
    size_t nheaders;
    const char *body;            /* decoded (chunked bodies joined); valid during the callback
                                    only (NUL-terminated for convenience) */
    size_t body_len;
} hd_httpc_res;

/* Completion: err is 0 and res set, or an HD_E* or UV_E* code with res NULL
 * and msg a short client-safe text (see the list above). msg and res are
 * valid during the call only. The callback may start requests, cancel
 * other calls, and call hd_httpc_free(). */
typedef void hd_httpc_cb(void *ud, int err, const char *msg, const hd_httpc_res *res);

/* Returns a client on loop with the limits in o (copied; NULL: all the
 * defaults), or NULL when out of memory. It holds a timer handle
 * (unreferenced: it never keeps the loop alive) until hd_httpc_free(). */
hd_httpc *hd_httpc_new(uv_loop_t *loop, const hd_httpc_opts *o);

/* Starts a request. Everything in req is copied (the caller's buffers may
 * go at once). Returns the call, owned by the client until its callback
 * has run or it is cancelled (the pointer is then dead), or NULL with a
 * reason in err (errlen bytes, NUL-terminated) when it cannot start: a bad
 * URL ("only http:// URLs are supported", "malformed URL: ..."), a bad
 * method or header, "request body too large", "too many requests in flight
 * (scripts.http.max_in_flight)", "too many backends in use", "the HTTP
 * client is shutting down", "out of memory". cb is called exactly once
 * later (never from inside hd_httpc_request), unless the call is
 * cancelled. */
hd_httpc_call *hd_httpc_request(hd_httpc *hc, const hd_httpc_req *req, hd_httpc_cb *cb, void *ud,
                                char *err, size_t errlen);

/* Cancels a call whose callback has not run: the callback is never
 * called; its connection is closed if it had one (never reused: it may be
 * mid-request), or the call leaves its origin's queue. NULL is a no-op.
 * Not for a call whose callback ran, nor after hd_httpc_free(). */
void hd_httpc_cancel(hd_httpc_call *call);

/* Counters for /metrics. */
typedef struct hd_httpc_stats {
    uint64_t requests;           /* calls accepted by hd_httpc_request */
    uint64_t errors;             /* calls whose callback got an error (timeouts too) */
    uint64_t timeouts;           /* of which their deadline passed */
    uint64_t connects;           /* TCP connections established */
    uint64_t reused;             /* requests sent on a connection that had served one already */
    uint64_t bytes_read;         /* bytes received from backends */
    size_t in_flight;            /* calls accepted, not finished nor cancelled */
    size_t open_conns;           /* connections resolving, connecting, busy or idle */
} hd_httpc_stats;

/* The client's counters, valid while it lives. */
const hd_httpc_stats *hd_httpc_stats_of(const hd_httpc *hc);

/* At shutdown: cancels every call (no callbacks), closes every handle;
 * frees hc once the last handle's close callback (and the last pending
 * resolution) ran: the loop must run on until then. done(ud) is called
 * then; done may be NULL. Safe from inside a call's callback. NULL is a
 * no-op. */
void hd_httpc_free(hd_httpc *hc, void (*done)(void *ud), void *ud);

/* ---- for tests and fuzzing ------------------------------------------------------------- */

/* Runs the client's response parser, as a call does, over n successive
 * reads (piece i: lens[i] bytes at pieces[i]) and then, when eof, the
 * server's close; head: the request was HEAD; max: max_response_bytes.
 * Returns 0 when a response is complete (passed to cb, if not NULL, valid
 * during the call; reusable: the connection would be kept), 1 when it is
 * still incomplete, or the error code a call would get, with its message
 * in msg (msglen bytes; may be 0). */
int hd_httpc_parse(const char *const *pieces, const size_t *lens, size_t n, int eof, int head,
                   uint32_t max, void (*cb)(void *ud, const hd_httpc_res *res, int reusable),
                   void *ud, char *msg, size_t msglen);

#endif
