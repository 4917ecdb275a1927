/* HTTP/1.1 on llhttp: request parsing with limits, keep-alive, pipelining,
 * responses. Routing of a complete request goes to the WebSocket handshake
 * (channel.c) for mount paths and to api.c for everything else. */
#ifndef HD_HTTP_H
#define HD_HTTP_H

#include "buf.h"

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

struct hd_conn;

#define HD_HTTP_MAX_HEADERS 64

typedef struct hd_http_header {
    uint32_t name_off, name_len, val_off, val_len; /* into hd_http_req.hbuf */
} hd_http_hdr;

typedef struct hd_http_req {
    int method;                  /* llhttp_method_t */
    hd_str url;                  /* request target as received */
    hd_str hbuf;                 /* header names and values, NUL-separated */
    hd_http_hdr h[HD_HTTP_MAX_HEADERS];
    uint32_t nh;
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

typedef struct hd_http_conn {
    llhttp_t parser;
    hd_http_req req;
    int busy;                    /* a request is being received */
} hd_http_conn;

/* Creates the HTTP state of a new connection; NULL when out of memory. */
hd_http_conn *hd_http_conn_new(struct hd_conn *c);
/* Frees it. NULL is a no-op. */
void hd_http_conn_free(hd_http_conn *h);

/* Feeds bytes read from the socket. May answer requests, upgrade the
 * connection to WebSocket (feeding it the rest) or close it. */
void hd_http_on_read(struct hd_conn *c, uint8_t *data, size_t len);

/* Returns the value of header name (case-insensitive) and its length in
 * *len, or NULL. Valid until the request is reset. */
const char *hd_http_header(const hd_http_req *r, const char *name, size_t *len);
/* One key=value pair of a query string, both still URL-encoded. */
typedef struct hd_query_pair {
    const char *k, *v;
    size_t kl, vl; /* vl is 0 for a bare key */
} hd_query_pair;
/* Splits the next pair off the query string [*q, end) (q may be NULL: no
 * query) and advances *q. Returns 0 when no pair is left. */
int hd_query_next(const char **q, const char *end, hd_query_pair *p);
/* Finds query parameter key in r's query string, URL-decodes its value
 * into out (NUL-terminated, truncated to outlen-1). Returns 1 if found. */
int hd_http_query_param(const hd_http_req *r, const char *key, char *out, size_t outlen);

/* Queues a response on c. extra_headers is "Name: value\r\n..." or NULL.
 * close: 1 adds Connection: close and closes gracefully after the write;
 * 0 keeps the connection open when the request allowed it. */
void hd_http_respond(struct hd_conn *c, const hd_http_req *r, int status,
                     const char *content_type, const char *body, size_t len,
                     const char *extra_headers, int close);
/* Queues {"error": msg} with status. */
void hd_http_error(struct hd_conn *c, const hd_http_req *r, int status, const char *msg,
                   const char *extra_headers, int close);

/* The reason phrase of an HTTP status. */
const char *hd_http_reason(int status);

#endif
