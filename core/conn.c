#define _GNU_SOURCE /* accept4 */
#include "conn.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define WQ_FREELIST_MAX 4096
#define IOV_BATCH 64
#define WRITE_BATCH_MAX (1u << 30) /* bytes of one writev, so inflight fits 32 bits */

/* Descriptors kept for herald's own files (loop, log, scripts, watches). */
#define FD_RESERVE 64

/* Connections written per loop turn. A large fan-out is written in slices,
 * with a poll for new input between them: frames published meanwhile join
 * the queues of connections not yet written, which then take several
 * frames in one writev. Fewer syscalls per delivery under load, and the
 * latency of one slice bounds how long input waits. */
#define FLUSH_SLICE 1024

/* Longest continuous hold of HTTP answers: then they go out even if
 * something else (a Lua timer, say) keeps the queues deep. */
#define MAX_HOLD_MS 1000

static void on_close(uv_handle_t *h);
static int ids_put(hd_net *net, hd_conn *c);
static void ids_del(hd_net *net, hd_conn *c);
static void ident_del(hd_net *net, hd_ident *e);
static void detach(hd_conn *c);
static void on_spin(uv_idle_t *h) { (void)h; }

static hd_wq_item *item_new(hd_net *net)
{
    hd_wq_item *it = net->wq_free;
    if (it) {
        net->wq_free = it->next;
        net->wq_nfree--;
        return it;
    }
    return malloc(sizeof *it);
}

static void item_free(hd_net *net, hd_wq_item *it)
{
    hd_buf_unref(it->buf);
    if (net->wq_nfree >= WQ_FREELIST_MAX) {
        free(it);
        return;
    }
    it->next = net->wq_free;
    net->wq_free = it;
    net->wq_nfree++;
}

/* Whatever queued bytes or marked a connection, in whatever loop phase:
 * the loop must not block in poll before the writer has run. An active
 * idle handle makes poll's timeout zero. */
static void wake(hd_net *net)
{
    if (!uv_is_active((uv_handle_t *)&net->spinner)) uv_idle_start(&net->spinner, on_spin);
}

static void mark_pending(hd_conn *c)
{
    if (c->flags & (HD_CF_PENDING | HD_CF_WRITING | HD_CF_CLOSED | HD_CF_HELD)) return;
    c->flags |= HD_CF_PENDING;
    hd_net *net = c->net;
    wake(net);
    if (c->kind == HD_CONN_HTTP || !net->pend_head) {
        /* HTTP answers jump the queue: a publisher waiting for its answer
         * should not wait for a large fan-out to be written first. */
        c->pend_prev = NULL;
        c->pend_next = net->pend_head;
        if (net->pend_head) net->pend_head->pend_prev = c;
        else net->pend_tail = c;
        net->pend_head = c;
    } else {
        c->pend_next = NULL;
        c->pend_prev = net->pend_tail;
        net->pend_tail->pend_next = c;
        net->pend_tail = c;
    }
}

static void unpend(hd_conn *c)
{
    if (!(c->flags & HD_CF_PENDING)) return;
    hd_net *net = c->net;
    if (c->pend_prev) c->pend_prev->pend_next = c->pend_next;
    else net->pend_head = c->pend_next;
    if (c->pend_next) c->pend_next->pend_prev = c->pend_prev;
    else net->pend_tail = c->pend_prev;
    c->pend_prev = c->pend_next = NULL;
    c->flags &= ~HD_CF_PENDING;
}

/* The held list reuses the pending links: a held connection is never
 * pending. */
static void hold(hd_conn *c)
{
    hd_net *net = c->net;
    unpend(c);
    net->st->answers_held++;
    c->flags |= HD_CF_HELD;
    c->pend_prev = NULL;
    c->pend_next = net->held;
    if (net->held) net->held->pend_prev = c;
    net->held = c;
}

static void unhold(hd_conn *c)
{
    hd_net *net = c->net;
    if (c->pend_prev) c->pend_prev->pend_next = c->pend_next;
    else net->held = c->pend_next;
    if (c->pend_next) c->pend_next->pend_prev = c->pend_prev;
    c->pend_prev = c->pend_next = NULL;
    c->flags &= ~HD_CF_HELD;
}

static void release_held(hd_net *net)
{
    while (net->held) {
        hd_conn *c = net->held;
        unhold(c);
        hd_conn_flush(c);
    }
}

static int enqueue(hd_conn *c, hd_buf *b, uint64_t topic_id)
{
    hd_wq_item *it = item_new(c->net);
    if (!it) return HD_ENOMEM;
    it->buf = hd_buf_ref(b);
    it->off = 0;
    it->topic_id = topic_id;
    it->next = NULL;
    c->net->queued_bytes += b->len;
    if (c->wq_tail) c->wq_tail->next = it;
    else c->wq_head = it;
    c->wq_tail = it;
    c->wq_bytes += b->len;
    mark_pending(c);
    return 0;
}

/* Drops n written bytes from the head of the queue. */
static void consume(hd_conn *c, size_t n)
{
    c->wq_bytes -= n;
    c->net->queued_bytes -= n;
    while (n > 0) {
        hd_wq_item *it = c->wq_head;
        size_t avail = it->buf->len - it->off;
        if (n < avail) {
            it->off += (uint32_t)n;
            return;
        }
        n -= avail;
        c->wq_head = it->next;
        if (!c->wq_head) c->wq_tail = NULL;
        item_free(c->net, it);
    }
}

/* Marks a slow consumer for a 1013 close by the writer. */
static void mark_reap(hd_conn *c)
{
    if (c->flags & HD_CF_REAP) return;
    c->flags |= HD_CF_REAP;
    c->reap_next = c->net->reap;
    c->net->reap = c;
    wake(c->net);
}

/* Drops queued frames from the oldest on until need more bytes fit under
 * limit, counting each in *counter. Only frames of topic_id when any_topic
 * is 0. Keeps what libuv is writing and a partly written head: a frame must
 * not be cut. */
static void drop_queued(hd_conn *c, int any_topic, uint64_t topic_id, size_t need, size_t limit,
                        uint64_t *counter)
{
    size_t keep = c->inflight;
    hd_wq_item **pp = &c->wq_head, *last = NULL;
    while (*pp && c->wq_bytes + need > limit) {
        hd_wq_item *it = *pp;
        size_t rest = it->buf->len - it->off;
        if (keep > 0 || it->off > 0 || (!any_topic && it->topic_id != topic_id)) {
            keep = keep > rest ? keep - rest : 0;
            last = it;
            pp = &it->next;
            continue;
        }
        *pp = it->next;
        c->wq_bytes -= rest;
        c->net->queued_bytes -= rest;
        (*counter)++;
        item_free(c->net, it);
    }
    /* Re-find the tail: the dropped item may have been it. */
    if (!*pp) c->wq_tail = last;
    else {
        hd_wq_item *t = *pp;
        while (t->next) t = t->next;
        c->wq_tail = t;
    }
    if (!c->wq_head) c->wq_tail = NULL;
}

/* The bytes drop_queued could drop of topic_id's frames: not what libuv
 * is writing, nor a partly written head. */
static size_t droppable(const hd_conn *c, uint64_t topic_id)
{
    size_t keep = c->inflight, n = 0;
    for (const hd_wq_item *it = c->wq_head; it; it = it->next) {
        size_t rest = it->buf->len - it->off;
        if (keep > 0 || it->off > 0) {
            keep = keep > rest ? keep - rest : 0;
            continue;
        }
        if (it->topic_id == topic_id) n += rest;
    }
    return n;
}

int hd_conn_send_topic(hd_conn *c, hd_buf *b, uint64_t topic_id, size_t limit, int drop_oldest)
{
    hd_net *net = c->net;
    if (!hd_conn_open(c)) {
        if (c->flags & HD_CF_REAP) net->st->dropped_slow++;
        return HD_ECLOSED;
    }
    if (!limit) limit = net->cfg->send_queue_bytes;
    if (c->kind != HD_CONN_HTTP && c->wq_bytes + b->len > limit) {
        if (drop_oldest && topic_id) {
            /* Only when dropping this topic's older frames makes room:
             * else the new one goes alone (dropping them too would lose
             * them for nothing). */
            if (c->wq_bytes - droppable(c, topic_id) + b->len > limit) {
                net->st->dropped_oldest++;
                return HD_EFULL;
            }
            drop_queued(c, 0, topic_id, b->len, limit, &net->st->dropped_oldest);
        } else {
            net->st->dropped_slow++;
            mark_reap(c);
            return HD_EFULL;
        }
    }
    int rc = enqueue(c, b, topic_id);
    if (rc == 0 && net->queued_bytes > net->cfg->max_queued_bytes) net->need_shed = 1;
    return rc;
}

int hd_conn_send(hd_conn *c, hd_buf *b) { return hd_conn_send_topic(c, b, 0, 0, 0); }

int hd_conn_send_copy(hd_conn *c, const void *p, size_t len)
{
    if (c->flags & HD_CF_CLOSED) return HD_ECLOSED;
    hd_buf *b = hd_buf_copy(p, len);
    if (!b) return HD_ENOMEM;
    int rc = enqueue(c, b, 0);
    hd_buf_unref(b);
    return rc;
}

int hd_conn_send_last(hd_conn *c, hd_buf *b)
{
    if (c->flags & HD_CF_CLOSED) return HD_ECLOSED;
    return enqueue(c, b, 0);
}

void hd_conn_drop_queue(hd_conn *c) { drop_queued(c, 1, 0, 0, 0, &c->net->st->dropped_slow); }

static void on_shutdown(uv_shutdown_t *req, int status)
{
    hd_conn *c = req->data;
    free(req);
    if (status < 0) hd_conn_close(c);
    /* Otherwise wait for the peer's EOF (read callback) or the deadline. */
}

static void begin_shutdown(hd_conn *c)
{
    if (c->flags & (HD_CF_SHUTDOWN | HD_CF_CLOSED)) return;
    c->flags |= HD_CF_SHUTDOWN;
    /* The request lives until on_shutdown (libuv calls it, with
     * UV_ECANCELED if the handle closes first). */
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req) {
        hd_conn_close(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        hd_conn_close(c);
    }
}

static void on_write(uv_write_t *req, int status)
{
    hd_conn *c = req->data;
    free(req);
    c->flags &= ~HD_CF_WRITING;
    if (c->flags & HD_CF_CLOSED) return; /* the queue is freed in on_close */
    if (status < 0) {
        hd_conn_close(c);
        return;
    }
    c->net->st->bytes_out += c->inflight;
    consume(c, c->inflight);
    c->inflight = 0;
    if (c->wq_head) mark_pending(c);
    else if (c->flags & HD_CF_FINISH) begin_shutdown(c);
}

static int fill_iov(hd_conn *c, uv_buf_t *iov, size_t *total)
{
    int n = 0;
    *total = 0;
    for (hd_wq_item *it = c->wq_head; it && n < IOV_BATCH; it = it->next) {
        size_t len = it->buf->len - it->off;
        if (n && *total + len > WRITE_BATCH_MAX) break;
        if (len > WRITE_BATCH_MAX) len = WRITE_BATCH_MAX;
        iov[n] = uv_buf_init((char *)it->buf->data + it->off, (unsigned)len);
        *total += len;
        n++;
    }
    return n;
}

void hd_conn_written(hd_conn *c, size_t n) { consume(c, n); }

void hd_conn_flush(hd_conn *c)
{
    if (c->flags & (HD_CF_WRITING | HD_CF_CLOSED)) return;
    if (c->kind == HD_CONN_LP) {
        c->ops->write(c);
        return;
    }
    uv_buf_t iov[IOV_BATCH];
    while (c->wq_head) {
        size_t total;
        int n = fill_iov(c, iov, &total);
        int r = uv_try_write((uv_stream_t *)&c->tcp, iov, (unsigned)n);
        if (r == UV_EAGAIN) r = 0;
        if (r < 0) {
            hd_debug("conn %llu: write failed: %s", (unsigned long long)c->id, uv_strerror(r));
            hd_conn_close(c);
            return;
        }
        c->net->st->bytes_out += (size_t)r;
        consume(c, (size_t)r);
        if ((size_t)r == total) continue;
        /* The kernel is full: hand the rest of this batch to libuv, which
         * writes it when the socket drains. The buffers stay queued (and
         * referenced) until on_write. */
        n = fill_iov(c, iov, &total);
        uv_write_t *req = malloc(sizeof *req); /* freed in on_write */
        if (!req) {
            hd_conn_close(c);
            return;
        }
        req->data = c;
        c->inflight = (uint32_t)total;
        c->flags |= HD_CF_WRITING;
        if (uv_write(req, (uv_stream_t *)&c->tcp, iov, (unsigned)n, on_write) < 0) {
            free(req);
            c->flags &= ~HD_CF_WRITING;
            hd_conn_close(c);
        }
        return;
    }
    if (c->flags & HD_CF_FINISH) begin_shutdown(c);
}

void hd_conn_finish(hd_conn *c, uint64_t deadline_ms)
{
    if (c->flags & HD_CF_CLOSED) return;
    uint64_t d = uv_now(c->net->loop) + deadline_ms;
    if (!(c->flags & HD_CF_FINISH) || d < c->deadline) c->deadline = d;
    c->flags |= HD_CF_FINISH;
    if (!c->wq_head && !(c->flags & HD_CF_WRITING)) begin_shutdown(c);
    else mark_pending(c);
}

void hd_conn_close(hd_conn *c)
{
    if (c->flags & HD_CF_CLOSED) return;
    c->ops->on_closed(c);
    c->flags |= HD_CF_CLOSED;
    if (c->flags & HD_CF_ADMIN) c->net->nadmin--; /* (its place is free for the next one) */
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void unlink_reap(hd_conn **head, hd_conn *c)
{
    for (hd_conn **pp = head; *pp; pp = &(*pp)->reap_next) {
        if (*pp == c) {
            *pp = c->reap_next;
            return;
        }
    }
}

static void on_close(uv_handle_t *h)
{
    hd_conn *c = h->data;
    hd_net *net = c->net;
    unpend(c);
    if (c->flags & HD_CF_HELD) unhold(c);
    /* The reaper normally runs within the same loop turn; this covers the
     * rare other order. */
    if (c->flags & HD_CF_REAP) unlink_reap(&net->reap, c);
    net->queued_bytes -= c->wq_bytes;
    while (c->wq_head) {
        hd_wq_item *it = c->wq_head;
        c->wq_head = it->next;
        item_free(net, it);
    }
    if (c->prev) c->prev->next = c->next;
    else net->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->kind == HD_CONN_LP) net->nlp--;
    else net->nconns--;
    if (c->kind == HD_CONN_WS) net->nws--;
    detach(c);
    ids_del(net, c);
    if (c->ident) ident_del(net, c->ident);
    c->ops->free(c);
    free(c->ident);
    free(c->assigns);
    free(c);
    if (net->stopping && net->nconns == 0 && net->nlp == 0 && net->on_empty) net->on_empty(net);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hd_conn *c = h->data;
    /* One shared buffer: every read is consumed before the next one. */
    *buf = uv_buf_init((char *)c->net->rbuf, sizeof c->net->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    hd_conn *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        /* EOF or error. After our FIN this is the normal end; otherwise the
         * peer went away (for a WebSocket without a close frame: 1006). */
        hd_conn_close(c);
        return;
    }
    if (c->flags & (HD_CF_CLOSED | HD_CF_NO_INPUT)) return;
    /* Once closing, the word holds the deadline: input does not extend it. */
    if (!(c->flags & (HD_CF_FINISH | HD_CF_SHUTDOWN | HD_CF_WS_CLOSE_SENT)))
        c->last_active = uv_now(c->net->loop);
    c->ops->on_read(c, (uint8_t *)buf->base, (size_t)nread);
}

/* ---- taking new connections --------------------------------------------------------- */

/* Admin connections at most at once, and the descriptors past the TCP cap
 * they may use (out of FD_RESERVE). */
#define ADMIN_MAX 32

/* Each refusal reason: the client's JSON error, the log's words, the metric's label. */
static const struct {
    const char *message, *why, *label;
} refusals[HD_REFUSE_COUNT] = {
    [HD_REFUSE_DESCRIPTORS] = {"server at capacity", "out of descriptors", "descriptors"},
    [HD_REFUSE_CAPACITY] = {"server at capacity", "over the connection cap", "capacity"},
    [HD_REFUSE_WS_CAPACITY] = {"server at capacity", "over the WebSocket cap", "ws_capacity"},
    [HD_REFUSE_PER_IP] = {"too many connections from this address", "over limits.max_connections_per_ip",
                          "per_ip"},
    [HD_REFUSE_RATE] = {"connection rate exceeded", "over limits.connect_rate", "connect_rate"},
    [HD_REFUSE_RATE_PER_IP] = {"connection rate exceeded", "over limits.connect_rate_per_ip",
                               "connect_rate_per_ip"},
    [HD_REFUSE_DRAINING] = {"server is shutting down", "draining", "draining"},
};

const char *hd_refusal_message(int reason) { return refusals[reason].message; }
const char *hd_refusal_label(int reason) { return refusals[reason].label; }

void hd_retry_after(char out[48], unsigned retry_s)
{
    out[0] = 0;
    if (retry_s) snprintf(out, 48, "Retry-After: %u\r\n", retry_s);
}

void hd_net_count_refusal(hd_net *net, int reason)
{
    net->st->tcp_refused[reason]++;
    net->refused_unlogged++;
    uint64_t now = uv_now(net->loop);
    if (net->refused_logged && now - net->refused_logged < 1000) return;
    hd_warn("refused %llu connection(s) in the last second, the last %s (%zu connections open)",
            (unsigned long long)net->refused_unlogged, refusals[reason].why, net->nconns);
    net->refused_logged = now;
    net->refused_unlogged = 0;
}

void hd_net_refuse_fd(hd_net *net, int fd, int reason, unsigned retry_s)
{
    hd_net_count_refusal(net, reason);
    /* What the client sent already is read first, so that the close is a
     * FIN and not a reset that could destroy the answer. */
    char sink[4096];
    for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {}
    char answer[512];
    const char *msg = refusals[reason].message;
    char retry[48];
    hd_retry_after(retry, retry_s);
    int n = snprintf(answer, sizeof answer,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nCache-Control: no-store\r\nConnection: close\r\n%s\r\n"
                     "{\"error\":\"%s\",\"status\":500}",
                     strlen(msg) + 25, retry, msg);
    if (send(fd, answer, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) hd_debug("refuse: %s", strerror(errno));
    close(fd);
}

/* Per-address limits of client p (not yet counting the connection being
 * admitted when counted is 0). */
static int admit_peer(hd_net *net, hd_peer *p, int counted, int *reason, unsigned *retry_s)
{
    const hd_config *cfg = net->cfg;
    *retry_s = 0;
    if (p->trusted) return 1; /* a trusted proxy's own connections */
    p = hd_peer_limited(p); /* (an IPv6 address: its network) */
    if (cfg->max_conns_per_ip && p->conns + (counted ? 0 : 1) > cfg->max_conns_per_ip) {
        *reason = HD_REFUSE_PER_IP;
        return 0;
    }
    if (cfg->connect_rate_per_ip &&
        !hd_bucket_take(&p->bucket, cfg->connect_rate_per_ip, uv_now(net->loop), retry_s)) {
        *reason = HD_REFUSE_RATE_PER_IP;
        return 0;
    }
    return 1;
}

static void attach(hd_conn *c, hd_peer *p)
{
    c->peer = p;
    hd_peer_hold(p);
}

static void detach(hd_conn *c)
{
    if (!c->peer) return;
    hd_peer_release(&c->net->peers, c->peer, c->net->cfg->connect_rate_per_ip, uv_now(c->net->loop));
    c->peer = NULL;
}

/* Frees p if no connection came to use it (and its bucket is full). */
static void forget(hd_net *net, hd_peer *p)
{
    hd_peer_hold(p);
    hd_peer_release(&net->peers, p, net->cfg->connect_rate_per_ip, uv_now(net->loop));
}

static hd_peer *peer_of_fd(hd_net *net, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    hd_addr a;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0 || hd_addr_from_sockaddr(&a, (struct sockaddr *)&ss))
        return NULL;
    return hd_peer_get(&net->peers, &a, net->cfg->trusted, net->cfg->ntrusted, net->cfg->ipv6_prefix);
}

/* The admin listener is full: one of its connections goes, so that
 * clients that never close cannot lock monitoring out. A connection
 * already closing (answered, waiting for the peer's FIN) goes first, else
 * the one idle longest (of equals, the one accepted first). */
static void evict_admin(hd_net *net)
{
    hd_conn *oldest = NULL;
    for (hd_conn *c = net->conns; c; c = c->next) {
        if (!(c->flags & HD_CF_ADMIN) || (c->flags & HD_CF_CLOSED)) continue;
        if (!hd_conn_open(c) || (c->flags & HD_CF_SHUTDOWN)) {
            oldest = c;
            break;
        }
        if (!oldest || c->last_active <= oldest->last_active) oldest = c;
    }
    if (!oldest) return;
    hd_info("conn %llu: the admin listener is full: closing one of its connections",
            (unsigned long long)oldest->id);
    hd_conn_close(oldest);
}

/* A connection of kind with protocol ops, its handle initialised (a TCP
 * one; a session's stays without a descriptor), not yet listed. */
static hd_conn *conn_new(hd_net *net, const hd_conn_ops *ops, uint8_t kind)
{
    hd_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    uv_tcp_init(net->loop, &c->tcp);
    c->tcp.data = c;
    c->net = net;
    c->ops = ops;
    c->id = ++net->next_conn_id;
    c->last_active = uv_now(net->loop);
    c->kind = kind;
    return c;
}

/* Lists c in net->conns, counted as a TCP connection or a session. */
static void conn_link(hd_net *net, hd_conn *c)
{
    c->next = net->conns;
    if (net->conns) net->conns->prev = c;
    net->conns = c;
    if (c->kind == HD_CONN_LP) net->nlp++;
    else net->nconns++;
}

void hd_net_take(hd_net *net, int fd, int admin)
{
    const hd_config *cfg = net->cfg;
    int reason;
    unsigned retry = 0;
    if (admin && net->nadmin >= ADMIN_MAX) evict_admin(net);
    if (admin ? net->nadmin >= ADMIN_MAX || net->nconns >= net->conn_cap + ADMIN_MAX
              : net->nconns >= net->conn_cap)
        return hd_net_refuse_fd(net, fd, HD_REFUSE_CAPACITY, 0);
    if (!admin && cfg->connect_rate && !hd_bucket_take(&net->rate, cfg->connect_rate, uv_now(net->loop), &retry))
        return hd_net_refuse_fd(net, fd, HD_REFUSE_RATE, retry);
    hd_peer *p = peer_of_fd(net, fd);
    if (!p) { /* gone already, or out of memory */
        close(fd);
        return;
    }
    if (!admin && !admit_peer(net, p, 0, &reason, &retry)) {
        hd_net_refuse_fd(net, fd, reason, retry);
        forget(net, p);
        return;
    }
    hd_conn *c = conn_new(net, net->accept_ops, HD_CONN_HTTP);
    if (!c) {
        hd_error("accept: out of memory");
        forget(net, p);
        close(fd);
        return;
    }
    conn_link(net, c);
    attach(c, p);
    if (p->trusted) c->flags |= HD_CF_TRUSTED_PEER;
    if (admin) {
        c->flags |= HD_CF_ADMIN;
        net->nadmin++;
    }
    int rc = uv_tcp_open(&c->tcp, (uv_os_sock_t)fd);
    if (rc < 0) {
        close(fd);
        hd_debug("accept failed: %s", uv_strerror(rc));
        hd_conn_close(c);
        return;
    }
    net->st->tcp_accepted++;
    /* TCP_NODELAY is inherited from the listener (Linux copies it to
     * accepted sockets). */
    if (ids_put(net, c) || uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) hd_conn_close(c);
}

/* The close callback of a connection that never made it into the list. */
static void free_unlisted(uv_handle_t *h) { free(h->data); }

hd_conn *hd_net_add_session(hd_net *net, const hd_conn_ops *ops, void *proto, hd_conn *from)
{
    /* (a handle without a descriptor: uv_close and its callback end the
     * session as they end a socket) */
    hd_conn *c = conn_new(net, ops, HD_CONN_LP);
    if (!c) return NULL;
    c->proto = proto;
    if (ids_put(net, c)) {
        uv_close((uv_handle_t *)&c->tcp, free_unlisted);
        return NULL;
    }
    conn_link(net, c);
    if (from->peer) attach(c, from->peer);
    return c;
}

void hd_conn_read_stop(hd_conn *c)
{
    if (c->kind == HD_CONN_LP) c->flags |= HD_CF_PAUSED;
    else if (!(c->flags & HD_CF_CLOSED)) uv_read_stop((uv_stream_t *)&c->tcp);
}

int hd_conn_read_start(hd_conn *c)
{
    if (c->flags & HD_CF_CLOSED) return HD_ECLOSED;
    if (c->kind == HD_CONN_LP) {
        c->flags &= ~HD_CF_PAUSED;
        c->ops->resume(c);
        return 0;
    }
    return uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int hd_conn_is_loopback(hd_conn *c) { return c->peer && c->peer->loopback; }

void hd_conn_client(hd_conn *c, char *buf, size_t len)
{
    if (c->peer) hd_addr_format(&c->peer->addr, buf, len);
    else snprintf(buf, len, "?");
}

int hd_conn_set_client(hd_conn *c, const hd_addr *a, int xff)
{
    hd_net *net = c->net;
    hd_peer *p;
    if (a) {
        p = hd_peer_get(&net->peers, a, net->cfg->trusted, net->cfg->ntrusted, net->cfg->ipv6_prefix);
    } else {
        uv_os_fd_t fd;
        p = uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 ? peer_of_fd(net, fd) : NULL;
    }
    if (!p) return HD_ENOMEM;
    if (p == c->peer) {
        if (!xff) c->flags &= ~HD_CF_XFF;
        return 0;
    }
    hd_peer_hold(p); /* (held while the old one is released: it may be freed) */
    detach(c);
    c->peer = p;
    c->flags &= ~HD_CF_XFF;
    if (a && xff) c->flags |= HD_CF_XFF;
    return 0;
}

int hd_conn_admit(hd_conn *c, int *reason, unsigned *retry_s)
{
    if (!c->peer || admit_peer(c->net, c->peer, 1, reason, retry_s)) return 1;
    hd_net_count_refusal(c->net, *reason);
    return 0;
}

void hd_net_sweep_peers(hd_net *net)
{
    hd_peers_sweep(&net->peers, net->cfg->connect_rate_per_ip, uv_now(net->loop));
}

void hd_conn_shut_now(hd_conn *c, uint16_t code, const char *reason)
{
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return;
    hd_conn_drop_queue(c);
    hd_conn_shut(c, code, reason);
}

void hd_conn_upgrade(hd_conn *c, hd_conn_kind kind, const hd_conn_ops *ops, void *proto)
{
    if (c->kind != HD_CONN_WS && kind == HD_CONN_WS) c->net->nws++;
    c->kind = (uint8_t)kind;
    c->ops = ops;
    c->proto = proto;
}

/* ---- the index: id -> connection ------------------------------------------------- */

/* Open addressing with linear probes, at most half full; deletion shifts
 * the following run back (no tombstones). */
static size_t id_slot(const hd_net *net, uint64_t id)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ULL) >> 32) & (net->ids_cap - 1);
}

static int ids_grow(hd_net *net)
{
    size_t cap = net->ids_cap ? net->ids_cap * 2 : 1024;
    hd_conn **t = calloc(cap, sizeof *t);
    if (!t) return HD_ENOMEM;
    hd_conn **old = net->ids;
    size_t ocap = net->ids_cap;
    net->ids = t;
    net->ids_cap = cap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i]) continue;
        size_t j = id_slot(net, old[i]->id);
        while (t[j]) j = (j + 1) & (cap - 1);
        t[j] = old[i];
    }
    free(old);
    return 0;
}

static int ids_put(hd_net *net, hd_conn *c)
{
    if ((net->ids_count + 1) * 2 > net->ids_cap && ids_grow(net)) return HD_ENOMEM;
    size_t j = id_slot(net, c->id);
    while (net->ids[j]) j = (j + 1) & (net->ids_cap - 1);
    net->ids[j] = c;
    net->ids_count++;
    return 0;
}

static void ids_del(hd_net *net, hd_conn *c)
{
    if (!net->ids_cap) return;
    size_t mask = net->ids_cap - 1, j = id_slot(net, c->id);
    while (net->ids[j] && net->ids[j] != c) j = (j + 1) & mask;
    if (!net->ids[j]) return; /* never indexed (accept failed) */
    net->ids[j] = NULL;
    net->ids_count--;
    /* Move back every entry of the run that its home slot allows. */
    for (size_t k = (j + 1) & mask; net->ids[k]; k = (k + 1) & mask) {
        size_t home = id_slot(net, net->ids[k]->id);
        /* Entry k may fill hole j when j lies cyclically in [home, k). */
        if (((k - home) & mask) >= ((k - j) & mask)) {
            net->ids[j] = net->ids[k];
            net->ids[k] = NULL;
            j = k;
        }
    }
}

hd_conn *hd_net_find(hd_net *net, uint64_t id)
{
    if (!net->ids_cap) return NULL;
    for (size_t j = id_slot(net, id); net->ids[j]; j = (j + 1) & (net->ids_cap - 1)) {
        hd_conn *c = net->ids[j];
        if (c->id == id) return c->flags & HD_CF_CLOSED ? NULL : c;
    }
    return NULL;
}

/* ---- the index: identity -> connections ------------------------------------------- */

static uint32_t str_hash(const char *p) { return hd_fnv1a(p, strlen(p)); }

static void ident_del(hd_net *net, hd_ident *e)
{
    hd_ident **pp = &net->idents[e->hash & (net->idents_cap - 1)];
    while (*pp && *pp != e) pp = &(*pp)->next;
    if (*pp) {
        *pp = e->next;
        net->idents_count--;
    }
}

static void idents_grow(hd_net *net)
{
    size_t cap = net->idents_cap ? net->idents_cap * 2 : 256;
    hd_ident **t = calloc(cap, sizeof *t);
    if (!t) return; /* longer chains; still correct */
    for (size_t i = 0; i < net->idents_cap; i++) {
        for (hd_ident *e = net->idents[i], *next; e; e = next) {
            next = e->next;
            e->next = t[e->hash & (cap - 1)];
            t[e->hash & (cap - 1)] = e;
        }
    }
    free(net->idents);
    net->idents = t;
    net->idents_cap = cap;
}

int hd_conn_set_identity(hd_conn *c, const char *id)
{
    hd_net *net = c->net;
    if (c->ident) {
        ident_del(net, c->ident);
        free(c->ident);
        c->ident = NULL;
    }
    if (!id) return 0;
    if (net->idents_count >= net->idents_cap) idents_grow(net);
    if (!net->idents_cap) return HD_ENOMEM;
    size_t n = strlen(id);
    hd_ident *e = malloc(sizeof *e + n + 1);
    if (!e) return HD_ENOMEM;
    memcpy(e->id, id, n + 1);
    e->conn = c;
    e->hash = str_hash(id);
    size_t b = e->hash & (net->idents_cap - 1);
    e->next = net->idents[b];
    net->idents[b] = e;
    net->idents_count++;
    c->ident = e;
    return 0;
}

hd_conn *hd_net_find_ident(hd_net *net, const char *id, hd_conn *after)
{
    if (!net->idents_cap) return NULL;
    hd_ident *e = after && after->ident ? after->ident->next
                                        : net->idents[str_hash(id) & (net->idents_cap - 1)];
    for (; e; e = e->next)
        if (strcmp(e->id, id) == 0 && !(e->conn->flags & HD_CF_CLOSED)) return e->conn;
    return NULL;
}

/* ---- the writer --------------------------------------------------------------------- */

static int queue_holds(const hd_conn *c, unsigned k)
{
    const hd_wq_item *it = c->wq_head;
    for (; it && k; it = it->next) k--;
    return k == 0;
}

/* Fan-out backpressure. The pending list is FIFO, so the queue at its head
 * holds what was published since the writer last reached that connection.
 * While it holds limits.fanout_backlog frames or more, HTTP answers wait:
 * a publisher that waits for its answer before the next publish is paced
 * at the speed fan-out completes, with every write still carrying several
 * frames, and delivery latency stays bounded by about that many fan-outs
 * instead of growing with the publishers' speed. Nothing is dropped.
 * HTTP answers jump the pending list, and hot is judged after a slice: an
 * answer due while no fan-out is under way goes at once, so a publisher
 * may run one fan-out ahead and two messages share each write. Holding
 * every answer until its own fan-out is written (no overlap) measured
 * ~40% fewer deliveries/s for ~10% lower p99 (tests/load/README.md). */
static void backpressure(hd_net *net)
{
    unsigned k = net->cfg->fanout_backlog;
    hd_conn *head = net->pend_head;
    int hot = k && head && net->hold && head->kind == HD_CONN_WS && queue_holds(head, k);
    uint64_t now = uv_now(net->loop);
    if (hot && !net->fanout_hot) net->hot_since = now;
    if (hot && now - net->hot_since >= MAX_HOLD_MS) hot = 0;
    net->fanout_hot = hot;
    if (!hot && net->held) release_held(net);
}

static void on_write_turn(uv_check_t *h)
{
    hd_net *net = h->data;
    hd_net_reap(net);
    for (int n = 0; n < FLUSH_SLICE && net->pend_head; n++) {
        hd_conn *c = net->pend_head;
        /* (a long poll's answer is a delivery, not a publisher's answer) */
        if (net->fanout_hot && c->kind == HD_CONN_HTTP && !(c->flags & HD_CF_POLL)) hold(c);
        else {
            unpend(c);
            hd_conn_flush(c);
        }
    }
    backpressure(net);
    /* The spinner stays on while a slice is left for the next turn. */
    if (!net->pend_head && !net->reap && uv_is_active((uv_handle_t *)&net->spinner))
        uv_idle_stop(&net->spinner);
}

/* Over limits.max_queued_bytes: close the connections with the largest
 * queues first (1013) until the total is back under the limit. */
static void shed(hd_net *net)
{
    net->need_shed = 0;
    for (int rounds = 0; rounds < 1000 && net->queued_bytes > net->cfg->max_queued_bytes;
         rounds++) {
        hd_conn *worst = NULL;
        for (hd_conn *c = net->conns; c; c = c->next)
            if (c->kind != HD_CONN_HTTP && hd_conn_open(c) &&
                (!worst || c->wq_bytes > worst->wq_bytes))
                worst = c;
        if (!worst || worst->wq_bytes == 0) return;
        net->st->shed++;
        hd_info("conn %llu: all queues hold %zu bytes (limit %zu): shedding its %zu",
                (unsigned long long)worst->id, net->queued_bytes, net->cfg->max_queued_bytes,
                worst->wq_bytes);
        hd_conn_shut_now(worst, 1013, "server overloaded");
    }
}

void hd_net_reap(hd_net *net)
{
    while (net->reap) {
        hd_conn *c = net->reap;
        net->reap = c->reap_next;
        c->flags &= ~HD_CF_REAP;
        net->st->slow_closes++;
        hd_info("conn %llu: send queue over %zu bytes: closing with 1013",
                (unsigned long long)c->id, net->cfg->send_queue_bytes);
        hd_conn_shut_now(c, 1013, "slow consumer");
    }
    if (net->need_shed) shed(net);
}

/* ---- the net's life ------------------------------------------------------------------ */

/* The connection caps. WebSocket connections stop at limits.max_connections
 * or, when RLIMIT_NOFILE is lower, at what the descriptors allow minus a
 * margin for HTTP: a client over the cap gets a 503 to its upgrade request
 * instead of an accept that fails for want of a descriptor. */
static void size_caps(hd_net *net)
{
    const hd_config *cfg = net->cfg;
    net->ws_cap = cfg->max_connections;
    net->conn_cap = cfg->max_connections + 1024;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
    size_t files = rl.rlim_cur > FD_RESERVE * 2 ? (size_t)rl.rlim_cur - FD_RESERVE : FD_RESERVE;
    size_t margin = files / 8 < 1024 ? files / 8 : 1024;
    if (net->conn_cap > files) net->conn_cap = files;
    if (net->ws_cap > files - margin) {
        net->ws_cap = files - margin;
        hd_warn("limits.max_connections is %zu but this process may open only %llu files "
                "(RLIMIT_NOFILE): WebSocket connections beyond %zu get 503",
                cfg->max_connections, (unsigned long long)rl.rlim_cur, net->ws_cap);
    }
}

int hd_net_init(hd_net *net, uv_loop_t *loop, const hd_config *cfg, hd_stats *st)
{
    memset(net, 0, sizeof *net);
    net->loop = loop;
    net->cfg = cfg;
    net->st = st;
    size_caps(net);
    uv_check_init(loop, &net->writer);
    net->writer.data = net;
    uv_idle_init(loop, &net->spinner);
    net->spinner.data = net;
    net->handles = 2;
    return 0;
}

void hd_net_start(hd_net *net) { uv_check_start(&net->writer, on_write_turn); }

void hd_net_close_all(hd_net *net)
{
    net->stopping = 1;
    for (hd_conn *c = net->conns; c; c = c->next) hd_conn_close(c);
}

void hd_net_close_handles(hd_net *net, uv_close_cb cb, void *data)
{
    if (uv_is_closing((uv_handle_t *)&net->writer)) return;
    net->writer.data = net->spinner.data = data;
    uv_close((uv_handle_t *)&net->writer, cb);
    uv_close((uv_handle_t *)&net->spinner, cb);
}

void hd_net_free(hd_net *net)
{
    while (net->wq_free) {
        hd_wq_item *it = net->wq_free;
        net->wq_free = it->next;
        free(it);
    }
    net->wq_nfree = 0;
    free(net->ids);
    net->ids = NULL;
    net->ids_cap = net->ids_count = 0;
    hd_peers_free(&net->peers);
    free(net->idents);
    net->idents = NULL;
    net->idents_cap = net->idents_count = 0;
}
