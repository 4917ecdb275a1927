#include "server.h"
#include "conn.h"
#include "err.h"
#include "http.h"
#include "log.h"
#include "presence.h"
#include "shaper.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

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

static void on_spin(uv_idle_t *h) { (void)h; }

static int queue_holds(const hd_conn *c, unsigned k)
{
    const hd_wq_item *it = c->wq_head;
    for (; it && k; it = it->next) k--;
    return k == 0;
}

/* Fan-out backpressure. The pending list is FIFO, so the queue at its head
 * holds what was published since the flusher last reached that connection.
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
static void backpressure(hd_server *srv)
{
    unsigned k = srv->cfg->fanout_backlog;
    hd_conn *head = srv->pend_head;
    int hot = k && head && srv->state == HD_READY && head->kind == HD_CONN_WS && queue_holds(head, k);
    uint64_t now = uv_now(srv->loop);
    if (hot && !srv->fanout_hot) srv->hot_since = now;
    if (hot && now - srv->hot_since >= MAX_HOLD_MS) hot = 0;
    srv->fanout_hot = hot;
    if (!hot && srv->held) hd_conn_release_held(srv);
}

static void on_flush(uv_check_t *h)
{
    hd_server *srv = h->data;
    hd_server_reap(srv);
    for (int n = 0; n < FLUSH_SLICE && srv->pend_head; n++) {
        hd_conn *c = srv->pend_head;
        if (srv->fanout_hot && c->kind == HD_CONN_HTTP) hd_conn_hold(c);
        else {
            hd_conn_unpend(c);
            hd_conn_flush(c);
        }
    }
    backpressure(srv);
    if (srv->pend_head) {
        if (!uv_is_active((uv_handle_t *)&srv->spinner)) uv_idle_start(&srv->spinner, on_spin);
    } else if (uv_is_active((uv_handle_t *)&srv->spinner)) {
        uv_idle_stop(&srv->spinner);
    }
}

/* Over limits.max_queued_bytes: close the connections with the largest
 * queues first (1013) until the total is back under the limit. */
static void shed(hd_server *srv)
{
    srv->need_shed = 0;
    for (int rounds = 0; rounds < 1000 && srv->queued_bytes > srv->cfg->max_queued_bytes;
         rounds++) {
        hd_conn *worst = NULL;
        for (hd_conn *c = srv->conns; c; c = c->next)
            if (c->kind == HD_CONN_WS && hd_conn_open(c) &&
                (!worst || c->wq_bytes > worst->wq_bytes))
                worst = c;
        if (!worst || worst->wq_bytes == 0) return;
        srv->m.shed++;
        hd_info("conn %llu: all queues hold %zu bytes (limit %zu): shedding its %zu",
                (unsigned long long)worst->id, srv->queued_bytes, srv->cfg->max_queued_bytes,
                worst->wq_bytes);
        hd_conn_ws_close_now(worst, 1013, "server overloaded");
    }
}

void hd_server_count_topic(hd_server *srv, const hd_topic_policy *p, int kind, uint64_t n)
{
    if (srv->topic_counts) srv->topic_counts[p->rule + 1][kind] += n;
}

void hd_server_reap(hd_server *srv)
{
    while (srv->reap) {
        hd_conn *c = srv->reap;
        srv->reap = c->reap_next;
        c->flags &= ~HD_CF_REAP;
        if (c->reap_code == 1013) {
            srv->m.slow_closes++;
            hd_info("conn %llu: send queue over %zu bytes: closing with 1013",
                    (unsigned long long)c->id, srv->cfg->send_queue_bytes);
        }
        hd_conn_ws_close_now(c, c->reap_code, "slow consumer");
    }
    if (srv->need_shed) shed(srv);
}

/* Once a tick: close connections that are idle or past their closing
 * deadline. A linear walk; cheap next to the work each connection costs. */
static void on_sweep(uv_timer_t *t)
{
    hd_server *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    const hd_config *cfg = srv->cfg;
    for (hd_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->flags & HD_CF_CLOSED) continue;
        int closing = c->flags & (HD_CF_FINISH | HD_CF_SHUTDOWN | HD_CF_WS_CLOSE_SENT);
        if (closing) {
            if (c->deadline && now >= c->deadline) hd_conn_close(c);
            continue;
        }
        if (c->kind == HD_CONN_WS) {
            if (now - c->last_active >= cfg->ws_idle_ms) {
                srv->m.idle_closes++;
                hd_conn_ws_close(c, 1001, "idle timeout");
            }
        } else if (now - c->last_active >= cfg->http_idle_ms) {
            srv->m.idle_closes++;
            c->flags |= HD_CF_NO_INPUT;
            hd_conn_finish(c, 1000);
        }
    }
}

static void on_topic_free(void *data, hd_topic *tp)
{
    hd_presence_forget(data, tp);
    hd_shaper_forget(data, tp);
}

/* The connection caps. WebSocket connections stop at limits.max_connections
 * or, when RLIMIT_NOFILE is lower, at what the descriptors allow minus a
 * margin for HTTP: a client over the cap gets a 503 to its upgrade request
 * instead of an accept that fails for want of a descriptor. */
static void size_caps(hd_server *srv)
{
    const hd_config *cfg = srv->cfg;
    srv->ws_cap = cfg->max_connections;
    srv->conn_cap = cfg->max_connections + 1024;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
    size_t files = rl.rlim_cur > FD_RESERVE * 2 ? (size_t)rl.rlim_cur - FD_RESERVE : FD_RESERVE;
    size_t margin = files / 8 < 1024 ? files / 8 : 1024;
    if (srv->conn_cap > files) srv->conn_cap = files;
    if (srv->ws_cap > files - margin) {
        srv->ws_cap = files - margin;
        hd_warn("limits.max_connections is %zu but this process may open only %llu files "
                "(RLIMIT_NOFILE): WebSocket connections beyond %zu get 503",
                cfg->max_connections, (unsigned long long)rl.rlim_cur, srv->ws_cap);
    }
}

int hd_server_init(hd_server *srv, uv_loop_t *loop, const hd_config *cfg)
{
    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->cfg = cfg;
    srv->state = HD_STARTING;
    int rc = hd_topics_init(&srv->topics);
    if (rc) return rc;
    srv->topic_counts = calloc(cfg->ntopic_rules + 1, sizeof *srv->topic_counts);
    if (!srv->topic_counts) return HD_ENOMEM;
    size_caps(srv);
    uv_check_init(loop, &srv->flusher);
    srv->flusher.data = srv;
    uv_timer_init(loop, &srv->sweeper);
    srv->sweeper.data = srv;
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    uv_timer_init(loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    uv_timer_init(loop, &srv->presence_timer);
    srv->presence_timer.data = srv;
    uv_idle_init(loop, &srv->spinner);
    srv->spinner.data = srv;
    srv->handles_open = 6;
    srv->topics.on_free = on_topic_free;
    srv->topics.on_free_data = srv;
    char host[32] = "herald";
    size_t hl = sizeof host;
    uv_os_gethostname(host, &hl);
    uint32_t rnd = 0;
    uv_random(NULL, NULL, &rnd, sizeof rnd, 0, NULL);
    snprintf(srv->node_id, sizeof srv->node_id, "%s-%d-%08x", host, (int)uv_os_getpid(), rnd);
    return 0;
}

static void on_connection(uv_stream_t *l, int status)
{
    hd_server *srv = l->data;
    if (status < 0) {
        /* libuv keeps a spare descriptor for EMFILE: it accepts and closes
         * the waiting connections, so the loop never spins on a failing
         * accept. One warning a second at most. */
        srv->m.tcp_refused++;
        uint64_t now = uv_now(srv->loop);
        if (!srv->emfile_logged || now - srv->emfile_logged >= 1000) {
            srv->emfile_logged = now;
            hd_warn("accept: %s (%zu connections open)", uv_strerror(status), srv->nconns);
        }
        return;
    }
    hd_conn_accept(srv);
}


static uint64_t sweep_interval(const hd_config *cfg)
{
    uint64_t t = cfg->ws_idle_ms;
    if (cfg->http_idle_ms < t) t = cfg->http_idle_ms;
    if (cfg->ws_close_ms < t) t = cfg->ws_close_ms;
    t /= 4;
    return t < 10 ? 10 : t > 1000 ? 1000 : t;
}

int hd_server_start(hd_server *srv)
{
    const hd_config *cfg = srv->cfg;
    struct sockaddr_storage addr;
    int rc = uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&addr);
    if (rc) rc = uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&addr);
    if (rc) {
        hd_error("listen.host %s is not an IP address", cfg->host);
        return rc;
    }
    rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
    if (!rc) uv_tcp_nodelay(&srv->listener, 1); /* inherited by accepted sockets */
    if (!rc) rc = uv_listen((uv_stream_t *)&srv->listener, 4096, on_connection);
    if (rc) {
        hd_error("cannot listen on %s:%d: %s", cfg->host, cfg->port, uv_strerror(rc));
        return rc;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_check_start(&srv->flusher, on_flush);
    uint64_t iv = sweep_interval(cfg);
    uv_timer_start(&srv->sweeper, on_sweep, iv, iv);
    srv->state = HD_READY;
    hd_script_watch(srv);
    const char *shown = strchr(cfg->host, ':') ? "[%s]" : "%s";
    char host[80];
    snprintf(host, sizeof host, shown, cfg->host);
    hd_info("listening on http://%s:%d (WebSocket at %s%s, API at /api/push)", host, srv->port,
            cfg->ws_paths[0], cfg->nmounts > 1 ? " and more" : "");
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    hd_server *srv = h->data;
    if (--srv->handles_open == 0) {
        srv->state = HD_STOPPED;
        if (srv->on_stopped) srv->on_stopped(srv);
    }
}

void hd_server_close_listener(hd_server *srv)
{
    if (!uv_is_closing((uv_handle_t *)&srv->listener)) {
        /* Connections the kernel completed but we had not accepted yet would
         * be reset by the close: take them first, so every request that
         * reached this node is answered (with Connection: close). */
        if (srv->state == HD_DRAINING && !srv->stopping) hd_conn_accept_backlog(srv);
        uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
    }
    hd_script_unwatch(srv);
}

void hd_server_stop(hd_server *srv)
{
    if (srv->state == HD_STOPPED) return;
    if (!srv->stopping) {
        srv->stopping = 1;
        srv->state = HD_DRAINING;
        hd_server_close_listener(srv);
        uv_timer_stop(&srv->drain_timer);
        if (srv->nconns) hd_info("stopping: closing %zu connection(s)", srv->nconns);
        for (hd_conn *c = srv->conns; c; c = c->next) hd_conn_close(c);
    }
    if (srv->nconns > 0) return; /* called again by the last close */
    if (uv_is_closing((uv_handle_t *)&srv->sweeper)) return;
    hd_script_stop(srv); /* the scripts' state and timers go last */
    uv_close((uv_handle_t *)&srv->flusher, on_handle_closed);
    uv_close((uv_handle_t *)&srv->sweeper, on_handle_closed);
    uv_close((uv_handle_t *)&srv->drain_timer, on_handle_closed);
    uv_close((uv_handle_t *)&srv->presence_timer, on_handle_closed);
    uv_close((uv_handle_t *)&srv->spinner, on_handle_closed);
}

void hd_server_free(hd_server *srv)
{
    hd_script_stop(srv);
    free(srv->topic_counts);
    srv->topic_counts = NULL;
    while (srv->wq_free) {
        struct hd_wq_item *it = srv->wq_free;
        srv->wq_free = it->next;
        free(it);
    }
    hd_topics_free(&srv->topics);
}
