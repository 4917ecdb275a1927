#include "http.h"
#include "hooks.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Grace for a closing HTTP connection to read our response and FIN. */
#define HTTP_CLOSE_GRACE_MS 2000

typedef struct hd_http_conn {
    llhttp_t parser;             /* parser.data: this struct */
    hd_http_req req;
    hd_conn *c;
    int busy;                    /* a request is being received */
    int deferred;                /* its answer comes later (hd_http_defer) */
    uint64_t head_since;         /* loop time the current head began; 0: none pending */
    int preface;                 /* a PROXY protocol header may come first (trusted peer) */
    int shed;                    /* refused: its body would keep inbound memory over the limit */
    uint64_t body_since;         /* loop time the current body began; 0: none pending */
    size_t held;                 /* bytes of a partial body, counted in net->inbound_bytes */
    hd_str stash;                /* bytes after a deferred request, read already */
    void (*gone)(void *ud, hd_conn *c); /* a watched deferral: its connection closed */
    void *gone_ud;
} hd_http_conn;

/* What a watched deferral keeps of what arrives meanwhile (a client does
 * not pipeline behind a held poll: little is needed, and 10,000 held polls
 * must not pin much); past it the connection is not read until the answer. */
#define WATCH_STASH_MAX 4096

static hd_http_conn *state_of(llhttp_t *p) { return p->data; }
static hd_conn *conn_of(llhttp_t *p) { return state_of(p)->c; }
static hd_http_req *req_of(llhttp_t *p) { return &state_of(p)->req; }
/* The context of an HTTP connection (its ops are the context's). */
static hd_http_ctx *ctx_of(const hd_conn *c) { return (hd_http_ctx *)c->ops; }

static void req_reset(hd_http_req *r)
{
    hd_str_reset(&r->url);
    hd_str_reset(&r->hbuf);
    hd_str_reset(&r->body);
    r->nh = 0;
    r->header_bytes = 0;
    r->path = r->query = NULL;
    r->path_len = r->query_len = 0;
    r->keep_alive = 1;
    r->err_status = 0;
    r->in_field = r->in_value = 0;
    r->method = 0;
}

static int fail(llhttp_t *p, int status)
{
    req_of(p)->err_status = status;
    return HPE_USER;
}

static int count_header_bytes(llhttp_t *p, size_t len)
{
    hd_http_req *r = req_of(p);
    r->header_bytes += len;
    return r->header_bytes > ctx_of(conn_of(p))->cfg->max_header_bytes;
}

static int on_message_begin(llhttp_t *p)
{
    req_reset(req_of(p));
    state_of(p)->busy = 1;
    /* Empty lines before it (which llhttp skips) may have started the clock. */
    if (!state_of(p)->head_since) state_of(p)->head_since = uv_now(conn_of(p)->net->loop);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    hd_http_req *r = req_of(p);
    if (r->url.len + len > ctx_of(conn_of(p))->cfg->max_url_bytes) return fail(p, 414);
    if (count_header_bytes(p, len)) return fail(p, 431);
    return hd_str_add(&r->url, at, len) ? fail(p, 503) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    hd_http_req *r = req_of(p);
    if (count_header_bytes(p, len)) return fail(p, 431);
    /* No blank in a field name (RFC 9112 5.1: "Host : x" must be refused;
     * llhttp 8.1 lets it through). */
    if (memchr(at, ' ', len) || memchr(at, '\t', len)) {
        llhttp_set_error_reason(p, "blank in a header name");
        return fail(p, 400);
    }
    if (!r->in_field) {
        if (r->nh >= HD_HTTP_MAX_HEADERS) return fail(p, 431);
        if (r->nh >= r->hcap) { /* (most requests have a dozen: 16, then 32, 64) */
            uint32_t cap = r->hcap ? r->hcap * 2 : 16;
            hd_http_hdr *h = realloc(r->h, cap * sizeof *h);
            if (!h) return fail(p, 503);
            r->h = h;
            r->hcap = cap;
        }
        r->in_field = 1;
        r->h[r->nh].name_off = (uint32_t)r->hbuf.len;
    }
    return hd_str_add(&r->hbuf, at, len) ? fail(p, 503) : 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    hd_http_req *r = req_of(p);
    hd_http_hdr *h = &r->h[r->nh];
    h->name_len = (uint32_t)r->hbuf.len - h->name_off;
    r->in_field = 0;
    if (hd_str_addc(&r->hbuf, 0)) return fail(p, 503);
    h->val_off = (uint32_t)r->hbuf.len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    hd_http_req *r = req_of(p);
    if (count_header_bytes(p, len)) return fail(p, 431);
    return hd_str_add(&r->hbuf, at, len) ? fail(p, 503) : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    hd_http_req *r = req_of(p);
    hd_http_hdr *h = &r->h[r->nh];
    h->val_len = (uint32_t)r->hbuf.len - h->val_off;
    /* Trailing blanks are not part of a field value (RFC 9110 5.5). */
    while (h->val_len > 0 && (r->hbuf.p[h->val_off + h->val_len - 1] == ' ' ||
                              r->hbuf.p[h->val_off + h->val_len - 1] == '\t'))
        h->val_len--;
    r->nh++;
    return hd_str_addc(&r->hbuf, 0) ? fail(p, 503) : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    hd_http_req *r = req_of(p);
    state_of(p)->head_since = 0;
    r->method = llhttp_get_method(p);
    r->keep_alive = llhttp_should_keep_alive(p);
    if (!r->url.p) hd_str_add(&r->url, "", 0);
    char *q = memchr(r->url.p, '?', r->url.len);
    r->path = r->url.p;
    r->path_len = q ? (size_t)(q - r->url.p) : r->url.len;
    if (q) {
        r->query = q + 1;
        r->query_len = r->url.len - r->path_len - 1;
    }
    if ((p->flags & F_CONTENT_LENGTH) &&
        p->content_length > ctx_of(conn_of(p))->cfg->max_body_bytes)
        return fail(p, 413);
    if (((p->flags & F_CONTENT_LENGTH) && p->content_length > 0) || (p->flags & F_CHUNKED))
        state_of(p)->body_since = uv_now(conn_of(p)->net->loop);
    return 0;
}

/* Counts n bytes of h's partial body in the node's inbound total. */
static void hold(hd_http_conn *h, size_t n)
{
    hd_net *net = h->c->net;
    net->inbound_bytes = net->inbound_bytes - h->held + n;
    h->held = n;
}

/* Partial bodies of large requests kept keep-alive connections' memory
 * long after their answer: a large buffer is given back. */
static void release_body(hd_http_conn *h)
{
    hold(h, 0);
    if (h->req.body.cap > 65536) hd_str_free(&h->req.body);
}

/* All partial bodies and WebSocket messages together are over
 * limits.max_inbound_bytes: the HTTP requests holding the largest bodies
 * are answered 503 and closed until they are not. Returns 1 when the one
 * being parsed (self) is the largest: its caller fails it. */
static int shed_bodies(hd_http_ctx *ctx, hd_http_conn *self)
{
    hd_net *net = self->c->net;
    while (net->inbound_bytes > ctx->cfg->max_inbound_bytes) {
        hd_http_conn *big = NULL;
        for (hd_conn *c = net->conns; c; c = c->next) {
            hd_http_conn *h = c->kind == HD_CONN_HTTP && c->ops == &ctx->ops ? c->proto : NULL;
            if (h && !(c->flags & (HD_CF_CLOSED | HD_CF_NO_INPUT)) && (!big || h->held > big->held)) big = h;
        }
        if (!big || !big->held) return 0; /* the rest is WebSocket messages' (wsconn.c sheds those) */
        ctx->st->http_inbound_sheds++;
        hd_info("conn %llu: answering 503: its partial request body (%zu bytes) is the largest and "
                "all together are over limits.max_inbound_bytes",
                (unsigned long long)big->c->id, big->held);
        if (big == self) {
            release_body(self);
            return 1;
        }
        big->req.keep_alive = 0;
        hd_http_error(big->c, &big->req, 503, "inbound memory limit", NULL, 1);
        big->c->flags |= HD_CF_NO_INPUT;
        release_body(big);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    hd_http_req *r = req_of(p);
    hd_http_ctx *ctx = ctx_of(conn_of(p));
    if (r->body.len + len > ctx->cfg->max_body_bytes) return fail(p, 413);
    if (hd_str_add(&r->body, at, len)) return fail(p, 503);
    hold(state_of(p), r->body.len);
    if (ctx->cfg->max_inbound_bytes < conn_of(p)->net->inbound_bytes && shed_bodies(ctx, state_of(p))) {
        state_of(p)->shed = 1;
        return fail(p, 503);
    }
    return 0;
}

/* A request through a trusted proxy: its X-Forwarded-For (the last such
 * header, the one the proxy wrote) names the client, else the proxy
 * itself is. */
static void forwarded_for(hd_conn *c, const hd_http_req *r)
{
    const hd_config *cfg = ctx_of(c)->cfg;
    const char *v = NULL;
    size_t vl = 0;
    for (uint32_t i = 0; i < r->nh; i++) {
        const hd_http_hdr *x = &r->h[i];
        if (hd_strieq(r->hbuf.p + x->name_off, x->name_len, "x-forwarded-for")) {
            v = r->hbuf.p + x->val_off;
            vl = x->val_len;
        }
    }
    hd_addr a;
    if (v && hd_xff_client(v, vl, cfg->trusted, cfg->ntrusted, &a)) hd_conn_set_client(c, &a, 1);
    else if (c->flags & HD_CF_XFF) hd_conn_set_client(c, NULL, 0);
}

static int on_message_complete(llhttp_t *p)
{
    hd_conn *c = conn_of(p);
    hd_http_req *r = req_of(p);
    hd_http_ctx *ctx = ctx_of(c);
    state_of(p)->busy = 0;
    state_of(p)->body_since = 0;
    hold(state_of(p), 0);
    if (!r->body.p) hd_str_add(&r->body, "", 0);
    /* An Upgrade the router does not take is ignored (RFC 9110 7.8) and
     * parsing goes on (on_read resumes); after CONNECT the bytes are a
     * tunnel's, so that answer closes. */
    if (r->method == HTTP_CONNECT) r->keep_alive = 0;
    if ((c->flags & (HD_CF_TRUSTED_PEER | HD_CF_PROXIED)) == HD_CF_TRUSTED_PEER) forwarded_for(c, r);
    ctx->on_request(ctx->ud, c, r, llhttp_get_upgrade(p));
    if (c->ops == &ctx->ops && !state_of(p)->deferred) release_body(state_of(p)); /* (answered) */
    /* After an upgrade llhttp stops by itself (HPE_PAUSED_UPGRADE); after a
     * response that closes the connection, or a switch of protocol on a
     * request llhttp did not flag as an upgrade, stop: what follows is not
     * ours (on_read hands the rest to the new protocol). */
    if (c->ops != &ctx->ops || !hd_conn_open(c) || state_of(p)->deferred) return HPE_PAUSED;
    return 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static hd_http_conn *state_new(hd_conn *c)
{
    hd_http_conn *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    llhttp_init(&h->parser, HTTP_REQUEST, &settings);
    h->parser.data = h;
    h->c = c;
    req_reset(&h->req);
    if (c->flags & HD_CF_TRUSTED_PEER) { /* (the head deadline covers the preface) */
        h->preface = 1;
        h->head_since = uv_now(c->net->loop);
    }
    return h;
}

static void state_free(hd_http_conn *h)
{
    if (!h) return;
    hold(h, 0);
    hd_str_free(&h->stash);
    hd_str_free(&h->req.url);
    hd_str_free(&h->req.hbuf);
    hd_str_free(&h->req.body);
    free(h->req.h);
    free(h);
}

static const char *limit_message(int status)
{
    switch (status) {
    case 413: return "request body too large";
    case 414: return "URI too long";
    case 431: return "request header fields too large";
    case 503: return "out of memory";
    default: return "bad request";
    }
}

static void parse(hd_conn *c, hd_http_conn *h, uint8_t *data, size_t len);

/* A connection from a trusted proxy may begin with a PROXY protocol
 * header (v1 or v2) that names the client; it is then admitted by the
 * per-address limits as if it had connected itself. Bytes are kept in the
 * stash until the header is complete (HD_PROXY_MAX at most). */
static void preface(hd_conn *c, hd_http_conn *h, uint8_t *data, size_t len)
{
    if (h->stash.len) {
        if (hd_str_add(&h->stash, data, len)) return hd_conn_close(c);
        data = (uint8_t *)h->stash.p;
        len = h->stash.len;
    }
    hd_addr a;
    int named = 0, why = 0;
    size_t used = 0;
    unsigned retry = 0;
    int rc = hd_proxy_parse(data, len, &a, &named, &used);
    if (rc == HD_PROXY_MORE) {
        if (!h->stash.len && hd_str_add(&h->stash, data, len)) hd_conn_close(c);
        return;
    }
    h->preface = 0;
    hd_str rest = h->stash; /* (data may point into it) */
    h->stash = (hd_str)HD_STR_INIT;
    if (rc == HD_PROXY_OK) c->flags |= HD_CF_PROXIED;
    if (rc == HD_PROXY_BAD) {
        hd_http_error(c, &h->req, 400, "bad request: malformed PROXY protocol header", NULL, 1);
        c->flags |= HD_CF_NO_INPUT;
    } else if (named && hd_conn_set_client(c, &a, 0)) {
        hd_http_error(c, &h->req, 503, "out of memory", NULL, 1);
        c->flags |= HD_CF_NO_INPUT;
    } else if (named && !hd_conn_admit(c, &why, &retry)) {
        hd_http_refuse(c, &h->req, why, retry);
        c->flags |= HD_CF_NO_INPUT;
    } else if (used < len) {
        parse(c, h, data + used, len - used);
    }
    hd_str_free(&rest);
}

static void on_read(hd_conn *c, uint8_t *data, size_t len)
{
    hd_http_conn *h = c->proto;
    if (!h && !(h = c->proto = state_new(c))) {
        hd_error("conn %llu: out of memory for a request", (unsigned long long)c->id);
        hd_conn_close(c);
        return;
    }
    if (h->preface) preface(c, h, data, len);
    else parse(c, h, data, len);
}

static void parse(hd_conn *c, hd_http_conn *h, uint8_t *data, size_t len)
{
    hd_http_ctx *ctx = ctx_of(c);
    if (h->deferred) { /* (read in the same turn as the deferred request, or watched) */
        hd_str_add(&h->stash, data, len);
        if (h->stash.len > WATCH_STASH_MAX) hd_conn_read_stop(c);
        return;
    }
    /* Any byte between requests starts the head's clock, even an empty line
     * that llhttp skips without beginning a message: else CRLFs trickled in
     * would hold the connection past http_head_ms and, being input, past
     * http_idle_ms too. */
    if (!h->busy && !h->head_since) h->head_since = uv_now(c->net->loop);
    llhttp_errno_t e = llhttp_execute(&h->parser, (const char *)data, len);
    if (e == HPE_PAUSED && h->deferred && c->ops == &ctx->ops) {
        /* The rest waits for the answer: kept, and no more is read. */
        size_t used = (size_t)((const uint8_t *)llhttp_get_error_pos(&h->parser) - data);
        if (used < len) hd_str_add(&h->stash, data + used, len - used);
        if (!h->gone || h->stash.len > WATCH_STASH_MAX) hd_conn_read_stop(c);
        return;
    }
    while (e == HPE_PAUSED_UPGRADE && c->ops == &ctx->ops && hd_conn_open(c)) {
        /* An upgrade request answered as plain HTTP: the connection stays
         * HTTP, and what follows is the next request. */
        size_t used = (size_t)((const uint8_t *)llhttp_get_error_pos(&h->parser) - data);
        llhttp_resume_after_upgrade(&h->parser);
        data += used;
        len -= used;
        e = len ? llhttp_execute(&h->parser, (const char *)data, len) : HPE_OK;
    }
    if (c->ops != &ctx->ops) {
        /* Upgraded: the HTTP state goes (the new protocol owns c->proto
         * now), and bytes after the handshake (a client may send its first
         * frames at once) are the new protocol's. */
        size_t used = e == HPE_OK ? len
                                  : (size_t)((const uint8_t *)llhttp_get_error_pos(&h->parser) - data);
        state_free(h);
        if (used < len && !(c->flags & (HD_CF_CLOSED | HD_CF_NO_INPUT)))
            c->ops->on_read(c, data + used, len - used);
        return;
    }
    if (e == HPE_OK || e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) return;
    int status = h->req.err_status ? h->req.err_status : 400;
    char msg[256];
    const char *why = llhttp_get_error_reason(&h->parser);
    if (status == 400) snprintf(msg, sizeof msg, "bad request: %s", why ? why : "malformed");
    else if (h->shed) snprintf(msg, sizeof msg, "inbound memory limit");
    else
        snprintf(msg, sizeof msg, "%s", limit_message(status));
    hd_debug("conn %llu: HTTP %d: %s", (unsigned long long)c->id, status, msg);
    h->req.keep_alive = 0;
    hd_http_error(c, &h->req, status, msg, NULL, 1);
    c->flags |= HD_CF_NO_INPUT;
}

void hd_http_refuse(hd_conn *c, const hd_http_req *r, int reason, unsigned retry_s)
{
    char retry[48];
    hd_retry_after(retry, retry_s);
    hd_http_error(c, r, 503, hd_refusal_message(reason), retry_s ? retry : NULL, 1);
}

const char *hd_http_header(const hd_http_req *r, const char *name, size_t *len)
{
    for (uint32_t i = 0; i < r->nh; i++) {
        const hd_http_hdr *h = &r->h[i];
        if (hd_strieq(r->hbuf.p + h->name_off, h->name_len, name)) {
            if (len) *len = h->val_len;
            return r->hbuf.p + h->val_off;
        }
    }
    return NULL;
}

int hd_http_query_param(const hd_http_req *r, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    const char *q = r->query, *end = r->query ? r->query + r->query_len : NULL;
    hd_query_pair p;
    while (hd_query_next(&q, end, &p)) {
        char kbuf[256];
        if (p.kl >= sizeof kbuf) continue;
        memcpy(kbuf, p.k, p.kl);
        if (hd_url_decode(kbuf, p.kl) != kl || memcmp(kbuf, key, kl) != 0) continue;
        /* Decode first, then truncate: the cut must fall on decoded bytes. */
        char *v = malloc(p.vl + 1);
        size_t vl = 0;
        if (v) {
            memcpy(v, p.v, p.vl);
            vl = hd_url_decode(v, p.vl);
            if (vl > outlen - 1) vl = outlen - 1;
            memcpy(out, v, vl);
            free(v);
        }
        out[vl] = 0;
        return 1;
    }
    return 0;
}

const char *hd_http_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

void hd_http_respond(hd_conn *c, const hd_http_req *r, int status,
                     const char *content_type, const char *body, size_t len,
                     const char *extra_headers, int close)
{
    hd_http_ctx *ctx = ctx_of(c);
    hd_stats *st = ctx->st;
    if (!r->keep_alive || (ctx->closing && close != HD_HTTP_KEEP)) close = 1;
    else if (close == HD_HTTP_KEEP) close = 0;
    hd_str s = HD_STR_INIT;
    /* Answers are not cached, unless the caller says otherwise (a static
     * asset: one Cache-Control header, or caches would combine both). */
    int cache = extra_headers && strncmp(extra_headers, "Cache-Control:", 14) == 0;
    hd_str_printf(&s,
                  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                  "%sConnection: %s\r\n%s\r\n",
                  status, hd_http_reason(status), content_type, len,
                  cache ? "" : "Cache-Control: no-store\r\n", close ? "close" : "keep-alive",
                  extra_headers ? extra_headers : "");
    if (len && r->method != HTTP_HEAD) hd_str_add(&s, body, len); /* RFC 9110 9.3.2 */
    st->http_requests++;
    if (status >= 400 && status < 500) st->http_errors_4xx++;
    if (s.oom) {
        hd_error("out of memory building a response");
        hd_conn_close(c);
    } else {
        hd_conn_send_copy(c, s.p, s.len);
        if (close) hd_conn_finish(c, HTTP_CLOSE_GRACE_MS);
    }
    hd_str_free(&s);
}

void hd_http_error(hd_conn *c, const hd_http_req *r, int status, const char *msg,
                   const char *extra_headers, int close)
{
    hd_str b = HD_STR_INIT;
    hd_str_adds(&b, "{\"error\":");
    hd_str_add_json(&b, msg, strlen(msg));
    /* A 503 says "status":500 too, as a long poll's answers do: phoenix.js's
     * LongPoll retries on it (any answer without a status stops it). */
    hd_str_adds(&b, status == 503 ? ",\"status\":500}" : "}");
    hd_http_respond(c, r, status, "application/json", b.p ? b.p : "", b.len, extra_headers,
                    close);
    hd_str_free(&b);
}

static void http_close(hd_conn *c, uint16_t code, const char *reason)
{
    (void)code, (void)reason;
    c->flags |= HD_CF_NO_INPUT;
    hd_conn_finish(c, HTTP_CLOSE_GRACE_MS);
}

/* A watched deferral hears of its connection's end. */
static void http_on_closed(hd_conn *c)
{
    hd_http_conn *h = c->proto;
    if (!h || !h->deferred || !h->gone) return;
    void (*gone)(void *, hd_conn *) = h->gone;
    h->gone = NULL;
    gone(h->gone_ud, c);
}

static void http_free(hd_conn *c)
{
    state_free(c->proto);
    c->proto = NULL;
}

void hd_http_init(hd_http_ctx *ctx, const hd_config *cfg, hd_stats *st,
                  hd_http_request_fn on_request, void *ud)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->ops.on_read = on_read;
    ctx->ops.close = http_close;
    ctx->ops.on_closed = http_on_closed;
    ctx->ops.free = http_free;
    ctx->cfg = cfg;
    ctx->st = st;
    ctx->on_request = on_request;
    ctx->ud = ud;
}

int hd_http_check_head(hd_conn *c, uint64_t now)
{
    hd_http_ctx *ctx = ctx_of(c);
    hd_http_conn *h = c->proto;
    uint64_t since = h ? h->head_since : c->last_active; /* no byte yet: since it connected */
    int body = 0;
    if (h && !since && h->body_since) { /* a body trickling in: its own deadline */
        since = h->body_since;
        body = 1;
    }
    uint64_t limit = body ? ctx->cfg->http_body_ms : ctx->cfg->http_head_ms;
    if (!since || now - since < limit || (h && h->deferred)) return 0;
    if (body) ctx->st->http_body_timeouts++;
    else ctx->st->http_head_timeouts++;
    hd_http_req none;
    memset(&none, 0, sizeof none);
    if (h) h->req.keep_alive = 0;
    hd_http_error(c, h ? &h->req : &none, 408,
                  body ? "request body not complete in time" : "request head not complete in time", NULL, 1);
    c->flags |= HD_CF_NO_INPUT;
    if (h) {
        h->head_since = h->body_since = 0;
        release_body(h);
    }
    return 1;
}

int hd_http_busy(const hd_conn *c)
{
    const hd_http_conn *h = c->kind == HD_CONN_HTTP ? c->proto : NULL;
    return h && (h->busy || h->deferred);
}

void hd_http_defer(hd_conn *c)
{
    hd_http_conn *h = c->kind == HD_CONN_HTTP ? c->proto : NULL;
    if (h) h->deferred = 1;
}

void hd_http_defer_watch(hd_conn *c, void (*gone)(void *ud, hd_conn *c), void *ud)
{
    hd_http_conn *h = c->kind == HD_CONN_HTTP ? c->proto : NULL;
    if (!h) return;
    h->deferred = 1;
    h->gone = gone;
    h->gone_ud = ud;
}

hd_http_req *hd_http_deferred(hd_conn *c)
{
    hd_http_conn *h = c->kind == HD_CONN_HTTP && !(c->flags & HD_CF_CLOSED) ? c->proto : NULL;
    return h && h->deferred ? &h->req : NULL;
}

void *hd_http_watch_ud(hd_conn *c, void (*gone)(void *ud, hd_conn *c))
{
    hd_http_conn *h = hd_http_deferred(c) ? c->proto : NULL;
    return h && h->gone == gone ? h->gone_ud : NULL;
}

void hd_http_resume(hd_conn *c)
{
    hd_http_conn *h = c->kind == HD_CONN_HTTP ? c->proto : NULL;
    if (!h || !h->deferred) return;
    h->deferred = 0;
    h->gone = NULL;
    release_body(h); /* (answered) */
    hd_str rest = h->stash; /* on_read may defer (and stash) again */
    h->stash = (hd_str)HD_STR_INIT;
    if (hd_conn_open(c)) { /* (an answer that closes: what follows is not read) */
        llhttp_resume(&h->parser);
        if (rest.len) parse(c, h, (uint8_t *)rest.p, rest.len);
    } else {
        c->flags |= HD_CF_NO_INPUT;
    }
    hd_str_free(&rest);
    /* on_read may have upgraded c (h is gone then) or deferred again. */
    hd_http_conn *now = c->kind == HD_CONN_HTTP ? c->proto : NULL;
    if (!(now && now->deferred)) hd_conn_read_start(c);
}

void hd_http_continue(hd_conn *c, hd_http_request_cont *fn, void *ud)
{
    hd_http_conn *h = c->kind == HD_CONN_HTTP && !(c->flags & HD_CF_CLOSED) ? c->proto : NULL;
    if (!h || !h->deferred) return;
    hd_http_ctx *ctx = ctx_of(c); /* (c->ops may change in fn) */
    h->deferred = 0;
    h->gone = NULL;
    fn(ud, c, &h->req);
    if (c->ops == &ctx->ops) {
        if (h->deferred) return; /* deferred anew: fn's own callback resumes */
        h->deferred = 1;
        hd_http_resume(c);
        return;
    }
    /* Upgraded: the HTTP state goes, and the bytes that came meanwhile are
     * the new protocol's. */
    hd_str rest = h->stash;
    h->stash = (hd_str)HD_STR_INIT;
    state_free(h);
    if (rest.len && !(c->flags & (HD_CF_CLOSED | HD_CF_NO_INPUT)))
        c->ops->on_read(c, (uint8_t *)rest.p, rest.len);
    hd_str_free(&rest);
    if (!(c->flags & HD_CF_CLOSED)) hd_conn_read_start(c);
}

void hd_http_wait_init(hd_http_wait *w, hd_conn *c, hd_http_req *r)
{
    *w = (hd_http_wait){c->net, c->id, c, r, 1, NULL};
}

/* The connection of a request whose hook waits closed: the hook goes. */
static void wait_gone(void *ud, hd_conn *c)
{
    (void)c;
    hd_http_wait *w = ud;
    hd_hook_cancel(w->run);
    free(w); /* (the context it begins) */
}

void hd_http_wait_hook(hd_http_wait *w, struct hd_hook_run *run)
{
    hd_http_defer_watch(w->c, wait_gone, w);
    w->run = run;
    w->now = 0;
    w->c = NULL;
    w->r = NULL;
}

void hd_http_wait_later(hd_http_wait *w)
{
    hd_http_defer(w->c);
    w->now = 0;
    w->c = NULL;
    w->r = NULL;
}

int hd_http_wait_end(hd_http_wait *w, hd_http_request_cont *fn, void *ud)
{
    if (w->now) {
        if (!hd_conn_open(w->c)) return -1;
        fn(ud, w->c, w->r);
        return 0;
    }
    hd_conn *c = hd_net_find(w->net, w->conn_id);
    if (!c || !hd_http_deferred(c)) return -1;
    hd_http_continue(c, fn, ud);
    return 0;
}

void hd_http_hook_req(const hd_http_req *r, hd_hook_req *out)
{
    out->method = llhttp_method_name((llhttp_method_t)r->method);
    out->path = r->path;
    out->path_len = r->path_len;
    out->query = r->query;
    out->query_len = r->query_len;
    out->hbuf = r->hbuf.p;
    out->h = r->h;
    out->nh = r->nh;
}
