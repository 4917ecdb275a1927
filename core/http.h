/* HTTP/1.1 on llhttp: request parsing with limits, keep-alive, pipelining,
 * responses. The protocol of every new connection (hd_http_ctx.ops). A
 * complete request goes to the callback the node registered (the API's
 * router), which may answer it, or upgrade the connection by switching
 * its protocol; what follows the request is then fed to the new one. */
#ifndef HD_HTTP_H
#define HD_HTTP_H

#include "buf.h"
#include "conn.h"
#include "script.h"

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

#define HD_HTTP_MAX_HEADERS 64

typedef hd_hdr hd_http_hdr; /* into hd_http_req.hbuf */

typedef struct hd_http_req {
    int method;                  /* llhttp_method_t */
    hd_str url;                  /* request target as received */
    hd_str hbuf;                 /* header names and values, NUL-separated */
    hd_http_hdr *h;              /* nh of them (room for hcap: grown, HD_HTTP_MAX_HEADERS at most) */
    uint32_t nh, hcap;
    hd_str body;                 /* decoded body (chunked bodies joined) */
    size_t header_bytes;         /* request line + headers so far */
    const char *path;            /* into url: up to '?' */
    size_t path_len;
    const char *query;           /* into url: after '?', or NULL */
    size_t query_len;
    int keep_alive;              /* the client allows keep-alive */
    int err_status;              /* a limit hit while parsing (413, 414, 431) */
    uint8_t in_field, in_value;
} hd_http_req;

/* A complete request (upgrade: llhttp's verdict that it asked for a
 * protocol switch). r is valid during the call. */
typedef void (*hd_http_request_fn)(void *ud, hd_conn *c, hd_http_req *r, int upgrade);

typedef struct hd_http_ctx {
    hd_conn_ops ops;             /* first: c->ops of an HTTP connection points here */
    const hd_config *cfg;        /* limits */
    hd_stats *st;
    hd_http_request_fn on_request;
    void *ud;
    int closing;                 /* every answer says Connection: close (draining) */
} hd_http_ctx;

/* Prepares ctx; new connections get &ctx->ops (hd_net.accept_ops). */
void hd_http_init(hd_http_ctx *ctx, const hd_config *cfg, hd_stats *st,
                  hd_http_request_fn on_request, void *ud);

/* 1 while an HTTP connection is receiving a request (or has a deferred
 * answer). */
int hd_http_busy(const hd_conn *c);

/* Defers the answer to the request being handled (call it from the
 * request callback, instead of answering): parsing and reading stop, and
 * the request stays valid, until hd_http_resume. Pipelined requests stay
 * in order behind it. */
void hd_http_defer(hd_conn *c);
/* As hd_http_defer, for an answer that may wait long (a held long poll):
 * the connection is still read (what arrives is kept for after the
 * answer, 4 KiB at most), so that its end is seen: when it closes while
 * the answer is deferred, gone(ud, c) is called (from its close; the
 * answer is not given then). */
void hd_http_defer_watch(hd_conn *c, void (*gone)(void *ud, hd_conn *c), void *ud);
/* The request whose answer c defers, or NULL (the connection is no longer
 * HTTP, or nothing is deferred). */
hd_http_req *hd_http_deferred(hd_conn *c);
/* The ud of c's watched deferral when its gone callback is gone, else
 * NULL. */
void *hd_http_watch_ud(hd_conn *c, void (*gone)(void *ud, hd_conn *c));
/* After the deferred answer was queued: parses what had arrived meanwhile
 * and reads again. */
void hd_http_resume(hd_conn *c);

/* A deferred request's answer, when it can be given: fn(ud, c, r) is
 * called as the request callback was, and may answer r (parsing then goes
 * on as after hd_http_resume), defer it again, or switch c's protocol (an
 * upgrade: the HTTP state goes and what arrived meanwhile is fed to the
 * new protocol). Nothing happens when c defers nothing (closed, or no
 * longer HTTP). */
typedef void hd_http_request_cont(void *ud, hd_conn *c, hd_http_req *r);
void hd_http_continue(hd_conn *c, hd_http_request_cont *fn, void *ud);

/* A request whose answer waits for something (a hook): answered at once
 * when that comes back inside the call that started it, else deferred
 * meanwhile and found again by id (it may have closed). */
typedef struct hd_http_wait {
    hd_net *net;
    uint64_t conn_id;
    hd_conn *c;                  /* while now */
    hd_http_req *r;
    int now;                     /* still inside the request callback */
    struct hd_hook_run *run;     /* the hook it waits for (hd_http_wait_hook), or NULL */
} hd_http_wait;

/* At the start, in the request callback. */
void hd_http_wait_init(hd_http_wait *w, hd_conn *c, hd_http_req *r);
/* The answer will come later: defers the request. */
void hd_http_wait_later(hd_http_wait *w);
/* The answer will come later, from run: defers the request and watches
 * its connection; if that closes first, run is cancelled (its done is not
 * called; counted as discarded) and w freed, w being the first member of
 * run's malloc'd context. */
void hd_http_wait_hook(hd_http_wait *w, struct hd_hook_run *run);
/* The answer is in: calls fn(ud, c, r) now or as hd_http_continue does.
 * Returns 0, or -1 when the request has gone (closed meanwhile). */
int hd_http_wait_end(hd_http_wait *w, hd_http_request_cont *fn, void *ud);

/* The head deadline (timeouts.http_head_ms): an HTTP connection that has
 * sent nothing since it connected, or whose current request head started
 * that long before now and is not complete, gets 408 and is closed (bytes
 * trickling in do not extend it). Returns 1 when it did. */
int hd_http_check_head(hd_conn *c, uint64_t now);

/* Fills what hooks see of r (pointers into r). */
void hd_http_hook_req(const hd_http_req *r, hd_hook_req *out);

/* Returns the value of header name (case-insensitive) and its length in
 * *len, or NULL. Valid until the request is reset. */
const char *hd_http_header(const hd_http_req *r, const char *name, size_t *len);
/* Finds query parameter key in r's query string, URL-decodes its value
 * into out (NUL-terminated, truncated to outlen-1). Returns 1 if found. */
int hd_http_query_param(const hd_http_req *r, const char *key, char *out, size_t outlen);

/* Queues a response on c. extra_headers is "Name: value\r\n..." or NULL;
 * the answer carries Cache-Control: no-store unless extra_headers begins
 * with a Cache-Control header of its own.
 * close: 1 adds Connection: close and closes gracefully after the write;
 * 0 keeps the connection open when the request allowed it and the node is
 * not draining; HD_HTTP_KEEP keeps it even while draining (the answers of
 * a long-poll session, which the drain ends in a phase of its own). */
#define HD_HTTP_KEEP (-1)
void hd_http_respond(hd_conn *c, const hd_http_req *r, int status,
                     const char *content_type, const char *body, size_t len,
                     const char *extra_headers, int close);
/* Queues {"error": msg} with status ({"error": msg, "status": 500} for
 * a 503: what phoenix.js's LongPoll retries on). */
void hd_http_error(hd_conn *c, const hd_http_req *r, int status, const char *msg,
                   const char *extra_headers, int close);

/* Answers 503 for a refusal (HD_REFUSE_*: its message), with Retry-After
 * when retry_s > 0, and closes. */
void hd_http_refuse(hd_conn *c, const hd_http_req *r, int reason, unsigned retry_s);

/* The reason phrase of an HTTP status. */
const char *hd_http_reason(int status);

#endif
