#define _GNU_SOURCE /* accept4 */
#include "conn.h"
#include "channel.h"
#include "err.h"
#include "http.h"
#include "log.h"
#include "server.h"
#include "topic.h"
#include "util.h"
#include "ws.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <string.h>

#define WQ_FREELIST_MAX 4096
#define IOV_BATCH 64

static void on_close(uv_handle_t *h);

static hd_wq_item *item_new(hd_server *srv)
{
    hd_wq_item *it = srv->wq_free;
    if (it) {
        srv->wq_free = it->next;
        srv->wq_nfree--;
        return it;
    }
    return malloc(sizeof *it);
}

static void item_free(hd_server *srv, hd_wq_item *it)
{
    hd_buf_unref(it->buf);
    if (srv->wq_nfree >= WQ_FREELIST_MAX) {
        free(it);
        return;
    }
    it->next = srv->wq_free;
    srv->wq_free = it;
    srv->wq_nfree++;
}

static void mark_pending(hd_conn *c)
{
    if (c->flags & (HD_CF_PENDING | HD_CF_WRITING | HD_CF_CLOSED | HD_CF_HELD)) return;
    c->flags |= HD_CF_PENDING;
    hd_server *srv = c->srv;
    if (c->kind == HD_CONN_HTTP || !srv->pend_head) {
        /* HTTP answers jump the queue: a publisher waiting for its answer
         * should not wait for a large fan-out to be written first. */
        c->pend_prev = NULL;
        c->pend_next = srv->pend_head;
        if (srv->pend_head) srv->pend_head->pend_prev = c;
        else srv->pend_tail = c;
        srv->pend_head = c;
    } else {
        c->pend_next = NULL;
        c->pend_prev = srv->pend_tail;
        srv->pend_tail->pend_next = c;
        srv->pend_tail = c;
    }
}

void hd_conn_unpend(hd_conn *c)
{
    if (!(c->flags & HD_CF_PENDING)) return;
    hd_server *srv = c->srv;
    if (c->pend_prev) c->pend_prev->pend_next = c->pend_next;
    else srv->pend_head = c->pend_next;
    if (c->pend_next) c->pend_next->pend_prev = c->pend_prev;
    else srv->pend_tail = c->pend_prev;
    c->pend_prev = c->pend_next = NULL;
    c->flags &= ~HD_CF_PENDING;
}

/* The held list reuses the pending links: a held connection is never
 * pending. */
void hd_conn_hold(hd_conn *c)
{
    hd_server *srv = c->srv;
    hd_conn_unpend(c);
    srv->m.answers_held++;
    c->flags |= HD_CF_HELD;
    c->pend_prev = NULL;
    c->pend_next = srv->held;
    if (srv->held) srv->held->pend_prev = c;
    srv->held = c;
}

static void unhold(hd_conn *c)
{
    hd_server *srv = c->srv;
    if (c->pend_prev) c->pend_prev->pend_next = c->pend_next;
    else srv->held = c->pend_next;
    if (c->pend_next) c->pend_next->pend_prev = c->pend_prev;
    c->pend_prev = c->pend_next = NULL;
    c->flags &= ~HD_CF_HELD;
}

void hd_conn_release_held(hd_server *srv)
{
    while (srv->held) {
        hd_conn *c = srv->held;
        unhold(c);
        hd_conn_flush(c);
    }
}

static int enqueue(hd_conn *c, hd_buf *b, uint64_t topic_id)
{
    hd_wq_item *it = item_new(c->srv);
    if (!it) return HD_ENOMEM;
    it->buf = hd_buf_ref(b);
    it->off = 0;
    it->topic_id = topic_id;
    it->next = NULL;
    c->srv->queued_bytes += b->len;
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
    c->srv->queued_bytes -= n;
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
        item_free(c->srv, it);
    }
}

static void mark_reap(hd_conn *c, uint16_t code)
{
    if (c->flags & HD_CF_REAP) return;
    c->flags |= HD_CF_REAP;
    c->reap_code = code;
    c->reap_next = c->srv->reap;
    c->srv->reap = c;
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
        c->srv->queued_bytes -= rest;
        (*counter)++;
        item_free(c->srv, it);
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

int hd_conn_send_topic(hd_conn *c, hd_buf *b, const hd_topic *tp, const hd_topic_policy *p)
{
    hd_server *srv = c->srv;
    if (!hd_conn_open(c)) {
        if (c->flags & HD_CF_REAP) srv->m.dropped_slow++;
        return HD_ECLOSED;
    }
    size_t limit = p && p->max_queue_bytes ? p->max_queue_bytes : srv->cfg->send_queue_bytes;
    if (c->kind == HD_CONN_WS && c->wq_bytes + b->len > limit) {
        if (p && tp && p->on_overflow == HD_OVERFLOW_DROP_OLDEST) {
            drop_queued(c, 0, tp->id, b->len, limit, &srv->m.dropped_oldest);
            if (c->wq_bytes + b->len > limit) {
                srv->m.dropped_oldest++; /* nothing of this topic left to drop */
                return HD_EFULL;
            }
        } else {
            srv->m.dropped_slow++;
            mark_reap(c, 1013);
            return HD_EFULL;
        }
    }
    int rc = enqueue(c, b, tp ? tp->id : 0);
    if (rc == 0 && srv->queued_bytes > srv->cfg->max_queued_bytes) srv->need_shed = 1;
    return rc;
}

int hd_conn_send(hd_conn *c, hd_buf *b) { return hd_conn_send_topic(c, b, NULL, NULL); }

int hd_conn_send_copy(hd_conn *c, const void *p, size_t len)
{
    if (c->flags & HD_CF_CLOSED) return HD_ECLOSED;
    hd_buf *b = hd_buf_copy(p, len);
    if (!b) return HD_ENOMEM;
    int rc = enqueue(c, b, 0);
    hd_buf_unref(b);
    return rc;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    hd_conn *c = req->data;
    free(req);
    c->sreq = NULL;
    if (status < 0) hd_conn_close(c);
    /* Otherwise wait for the peer's EOF (read callback) or the deadline. */
}

static void begin_shutdown(hd_conn *c)
{
    if (c->flags & (HD_CF_SHUTDOWN | HD_CF_CLOSED)) return;
    c->flags |= HD_CF_SHUTDOWN;
    c->sreq = malloc(sizeof *c->sreq);
    if (!c->sreq) {
        hd_conn_close(c);
        return;
    }
    c->sreq->data = c;
    if (uv_shutdown(c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(c->sreq);
        c->sreq = NULL;
        hd_conn_close(c);
    }
}

static void on_write(uv_write_t *req, int status)
{
    hd_conn *c = req->data;
    free(req);
    c->wreq = NULL;
    c->flags &= ~HD_CF_WRITING;
    if (c->flags & HD_CF_CLOSED) return; /* the queue is freed in on_close */
    if (status < 0) {
        hd_conn_close(c);
        return;
    }
    c->srv->m.bytes_out += c->inflight;
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
        iov[n] = uv_buf_init((char *)it->buf->data + it->off, it->buf->len - it->off);
        *total += iov[n].len;
        n++;
    }
    return n;
}

void hd_conn_flush(hd_conn *c)
{
    if (c->flags & (HD_CF_WRITING | HD_CF_CLOSED)) return;
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
        c->srv->m.bytes_out += (size_t)r;
        consume(c, (size_t)r);
        if ((size_t)r == total) continue;
        /* The kernel is full: hand the rest of this batch to libuv, which
         * writes it when the socket drains. The buffers stay queued (and
         * referenced) until on_write. */
        n = fill_iov(c, iov, &total);
        c->wreq = malloc(sizeof *c->wreq);
        if (!c->wreq) {
            hd_conn_close(c);
            return;
        }
        c->wreq->data = c;
        c->inflight = total;
        c->flags |= HD_CF_WRITING;
        if (uv_write(c->wreq, (uv_stream_t *)&c->tcp, iov, (unsigned)n, on_write) < 0) {
            free(c->wreq);
            c->wreq = NULL;
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
    uint64_t d = uv_now(c->srv->loop) + deadline_ms;
    if (!(c->flags & HD_CF_FINISH) || d < c->deadline) c->deadline = d;
    c->flags |= HD_CF_FINISH;
    if (!c->wq_head && !(c->flags & HD_CF_WRITING)) begin_shutdown(c);
    else mark_pending(c);
}

void hd_conn_close(hd_conn *c)
{
    if (c->flags & HD_CF_CLOSED) return;
    if (c->ws) hd_channel_unlink_all(c);
    c->flags |= HD_CF_CLOSED;
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
    hd_server *srv = c->srv;
    hd_conn_unpend(c);
    if (c->flags & HD_CF_HELD) unhold(c);
    /* The reaper normally runs within the same loop turn; this covers the
     * rare other order. */
    if (c->flags & HD_CF_REAP) unlink_reap(&srv->reap, c);
    srv->queued_bytes -= c->wq_bytes;
    while (c->wq_head) {
        hd_wq_item *it = c->wq_head;
        c->wq_head = it->next;
        item_free(srv, it);
    }
    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->nconns--;
    if (c->kind == HD_CONN_WS) srv->nws--;
    hd_http_conn_free(c->http);
    hd_channel_free(c->ws);
    free(c);
    if (srv->stopping && srv->nconns == 0) hd_server_stop(srv);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hd_conn *c = h->data;
    /* One shared buffer: every read is consumed before the next one. */
    *buf = uv_buf_init((char *)c->srv->rbuf, sizeof c->srv->rbuf);
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
    c->last_active = uv_now(c->srv->loop);
    if (c->kind == HD_CONN_HTTP) hd_http_on_read(c, (uint8_t *)buf->base, (size_t)nread);
    else hd_channel_on_read(c, (uint8_t *)buf->base, (size_t)nread);
}

/* Over the connection cap, but holding a descriptor: answer 503 without
 * reading the request, then close gracefully (input is read and ignored
 * so that the close is a FIN, not a reset that could lose the answer). */
static void refuse(hd_conn *c)
{
    static const char answer[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                 "Content-Type: application/json\r\n"
                                 "Content-Length: 30\r\n"
                                 "Cache-Control: no-store\r\n"
                                 "Connection: close\r\n\r\n"
                                 "{\"error\":\"server at capacity\"}";
    c->srv->m.tcp_refused++;
    c->flags |= HD_CF_NO_INPUT;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0 ||
        hd_conn_send_copy(c, answer, sizeof answer - 1) < 0) {
        hd_conn_close(c);
        return;
    }
    hd_conn_finish(c, c->srv->cfg->ws_close_ms);
}

/* Takes a new connection: from the listener (fd < 0) or an accepted fd. */
static void take(hd_server *srv, int fd)
{
    hd_conn *c = calloc(1, sizeof *c);
    if (!c) {
        hd_error("accept: out of memory");
        return;
    }
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    c->srv = srv;
    c->id = ++srv->next_conn_id;
    c->last_active = uv_now(srv->loop);
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    int rc = fd < 0 ? uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp)
                    : uv_tcp_open(&c->tcp, (uv_os_sock_t)fd);
    if (rc < 0) {
        if (fd >= 0 && !uv_is_closing((uv_handle_t *)&c->tcp)) close(fd);
        hd_debug("accept failed: %s", uv_strerror(rc));
        hd_conn_close(c);
        return;
    }
    srv->m.tcp_accepted++;
    /* HTTP connections beyond the WebSocket cap plus a margin for API
     * clients are refused at once, so a flood cannot exhaust descriptors. */
    if (srv->nconns > srv->conn_cap) {
        refuse(c);
        return;
    }
    /* TCP_NODELAY is inherited from the listener (Linux copies it to
     * accepted sockets); the peer address is read only when needed. */
    c->kind = HD_CONN_HTTP;
    c->http = hd_http_conn_new(c);
    if (!c->http || uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        hd_conn_close(c);
        return;
    }
}

void hd_conn_accept(hd_server *srv) { take(srv, -1); }

void hd_conn_accept_backlog(hd_server *srv)
{
    uv_os_fd_t lfd;
    if (uv_fileno((uv_handle_t *)&srv->listener, &lfd) != 0) return;
    for (int n = 0; n < 65536; n++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN: nothing left waiting */
        take(srv, fd);
    }
}

int hd_conn_is_loopback(hd_conn *c)
{
    if (!(c->flags & HD_CF_PEER_KNOWN)) {
        char peer[64];
        hd_conn_peer(c, peer, sizeof peer);
        c->flags |= HD_CF_PEER_KNOWN;
        if (hd_addr_is_loopback(peer)) c->flags |= HD_CF_LOOPBACK;
    }
    return (c->flags & HD_CF_LOOPBACK) != 0;
}

void hd_conn_peer(hd_conn *c, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    snprintf(buf, len, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, buf, len);
        else
            uv_ip4_name((struct sockaddr_in *)&ss, buf, len);
    }
}

static void queue_close_frame(hd_conn *c, uint16_t code, const char *reason)
{
    hd_buf *f = hd_ws_close_frame(code, reason);
    if (f) {
        enqueue(c, f, 0);
        hd_buf_unref(f);
    }
    c->flags |= HD_CF_WS_CLOSE_SENT;
    if (code >= 1000 && code <= 1015) c->srv->m.ws_closes_sent[code - 1000]++;
}

void hd_conn_ws_close(hd_conn *c, uint16_t code, const char *reason)
{
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return;
    hd_channel_unlink_all(c);
    queue_close_frame(c, code, reason);
    c->deadline = uv_now(c->srv->loop) + c->srv->cfg->ws_close_ms;
    /* Once both close frames have crossed, the server closes TCP first. */
    if (c->flags & HD_CF_WS_CLOSE_RECV) hd_conn_finish(c, c->srv->cfg->ws_close_ms);
}

void hd_conn_ws_close_now(hd_conn *c, uint16_t code, const char *reason)
{
    if (c->flags & (HD_CF_WS_CLOSE_SENT | HD_CF_CLOSED)) return;
    drop_queued(c, 1, 0, 0, 0, &c->srv->m.dropped_slow);
    hd_conn_ws_close(c, code, reason);
}
