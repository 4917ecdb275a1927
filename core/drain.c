#include "drain.h"
#include "hooks.h"
#include "log.h"
#include "metrics.h"

#include <string.h>

#define TICK_MS 10
#define PRESENCE_MS 2000 /* longest wait for Redis to take the presence withdrawal */

static const char *const names[HD_PHASE_COUNT] = {
    "none", "announce", "stop_accepting", "http", "flush", "disconnect", "presence", "stopped",
};

const char *hd_phase_name(hd_phase p) { return p < HD_PHASE_COUNT ? names[p] : "?"; }

static void shutdown_done(void *ud, hd_hook_result *res)
{
    (void)res;
    hd_drain *dr = ud;
    /* The phase's own work, and its budget, start once its hooks are done. */
    if (--dr->hooks_waiting == 0) dr->stats.work_started_ms = uv_now(dr->loop);
}

static void enter(hd_drain *dr, hd_phase p)
{
    uint64_t now = uv_now(dr->loop);
    hd_drain_stats *d = &dr->stats;
    if (dr->phase != HD_PHASE_NONE) {
        d->duration_ms[dr->phase] = now - d->phase_started_ms;
        hd_info("drain: phase %s done in %llu ms", names[dr->phase],
                (unsigned long long)d->duration_ms[dr->phase]);
    }
    dr->phase = p;
    d->phase_started_ms = d->work_started_ms = now;
    /* The phase's work waits for its shutdown hooks (bounded by
     * scripts.io_timeout_ms and the drain's budget). */
    dr->hooks_waiting++;
    hd_hook_shutdown_start(dr->sc, names[p], shutdown_done, dr);
}

static int queued_anywhere(hd_drain *dr)
{
    /* Cross-node publishes waiting for a link that is up go out too. */
    if (dr->cluster && hd_cluster_up(dr->cluster) && hd_cluster_pending(dr->cluster)) return 1;
    for (hd_conn *c = dr->net->conns; c; c = c->next)
        if (!(c->flags & HD_CF_CLOSED) && c->wq_bytes > 0) return 1;
    return 0;
}

/* An HTTP connection the http phase waits for: not one that carries a
 * long-poll session's requests (it goes with the session, later). */
static int api_conn(const hd_conn *c)
{
    return c->kind == HD_CONN_HTTP && !(c->flags & (HD_CF_CLOSED | HD_CF_POLL));
}

static size_t count_api(hd_drain *dr)
{
    size_t n = 0;
    for (hd_conn *c = dr->net->conns; c; c = c->next) n += api_conn(c);
    return n;
}

/* Closes what is left now: the budget ran out. */
static void force_all(hd_drain *dr)
{
    for (hd_conn *c = dr->net->conns; c; c = c->next) {
        if (c->flags & HD_CF_CLOSED) continue;
        dr->stats.forced++;
        for (hd_wq_item *it = c->wq_head; it; it = it->next) dr->stats.lost_frames++;
        hd_conn_close(c);
    }
}

/* The stopped phase: its hooks may wait (within the drain's budget),
 * then the node stops (step). */
static void finish(hd_drain *dr)
{
    enter(dr, HD_PHASE_STOPPED);
    hd_drain_stats *d = &dr->stats;
    hd_info("drain: complete in %llu ms (%llu HTTP and %llu WebSocket connections and %llu "
            "long-poll sessions closed, %llu forced)",
            (unsigned long long)(uv_now(dr->loop) - d->started_ms),
            (unsigned long long)d->http_closed, (unsigned long long)d->ws_closed,
            (unsigned long long)d->lp_closed, (unsigned long long)d->forced);
}

/* One tick of the disconnect phase: WebSockets close with 1012 and
 * long-poll sessions end, at most drain.disconnect_rate a second, but fast
 * enough to finish within 80% of what is left of the budget; once the
 * sessions are gone, the connections their polls came on close too (as
 * the http phase closed the API's). */
static void disconnect(hd_drain *dr, uint64_t elapsed)
{
    const hd_config *cfg = dr->cfg;
    hd_drain_stats *d = &dr->stats;
    double left_s = (double)(cfg->drain_timeout_ms - elapsed) / 1000.0 * 0.8;
    size_t open = 0;
    for (hd_conn *c = dr->net->conns; c; c = c->next)
        if (c->kind != HD_CONN_HTTP && hd_conn_open(c)) open++;
    double rate = (double)cfg->drain_disconnect_rate;
    if (left_s > 0 && open / left_s > rate) rate = open / left_s;
    d->allowance += rate * TICK_MS / 1000.0;
    if (d->allowance > rate * TICK_MS / 1000.0 + 1) d->allowance = rate * TICK_MS / 1000.0 + 1;
    for (hd_conn *c = dr->net->conns, *next; c && d->allowance >= 1; c = next) {
        next = c->next; /* (a connection is unlinked only by its close callback) */
        if (c->kind == HD_CONN_HTTP || !hd_conn_open(c)) continue;
        if (c->kind == HD_CONN_LP) d->lp_closed++;
        else d->ws_closed++;
        hd_conn_shut(c, 1012, "server restart");
        d->allowance -= 1;
    }
    /* Polls this node holds for sessions of others: their clients poll
     * again through another node. */
    if (dr->lp) hd_lp_drain_forwards(dr->lp);
    for (hd_conn *c = dr->net->conns; !dr->net->nlp && c; c = c->next)
        if ((c->flags & HD_CF_POLL) && hd_conn_open(c) && !hd_http_busy(c) && !c->wq_bytes) {
            c->flags |= HD_CF_NO_INPUT;
            hd_conn_finish(c, 1000);
        }
}

static void step(uv_timer_t *t)
{
    hd_drain *dr = t->data;
    const hd_config *cfg = dr->cfg;
    hd_drain_stats *d = &dr->stats;
    uint64_t now = uv_now(dr->loop);
    uint64_t elapsed = now - d->started_ms;

    if (elapsed >= cfg->drain_timeout_ms && dr->phase < HD_PHASE_PRESENCE) {
        d->overran = 1;
        hd_warn("drain: phase %s overran the %llu ms budget by %llu ms: closing %zu "
                "connection(s) now",
                names[dr->phase], (unsigned long long)cfg->drain_timeout_ms,
                (unsigned long long)(elapsed - cfg->drain_timeout_ms), dr->net->nconns);
        force_all(dr);
        enter(dr, HD_PHASE_PRESENCE);
        finish(dr);
    }

    /* Each turn of the loop is one phase's check: it returns to wait (the
     * next tick), or enters the next phase and goes on with it. A phase's
     * work waits for its shutdown hooks, and its own budget counts from
     * when they are done; the stopped phase's hooks wait within what is
     * left of the drain's budget. */
    for (;;) {
        if (dr->hooks_waiting && (dr->phase != HD_PHASE_STOPPED || elapsed < cfg->drain_timeout_ms))
            return;
        uint64_t in_phase = now - d->work_started_ms;
        switch (dr->phase) {
        case HD_PHASE_ANNOUNCE:
            if (in_phase < cfg->drain_announce_ms) return;
            enter(dr, HD_PHASE_STOP_ACCEPTING);
            dr->close_listener(dr->ud);
            continue;
        case HD_PHASE_STOP_ACCEPTING:
            enter(dr, HD_PHASE_HTTP);
            continue;
        case HD_PHASE_HTTP:
            for (hd_conn *c = dr->net->conns; c; c = c->next) {
                if (!api_conn(c) || !hd_conn_open(c)) continue;
                int idle = !hd_http_busy(c) && c->wq_bytes == 0 &&
                           now - c->last_active >= cfg->drain_http_idle_ms;
                if (idle) {
                    c->flags |= HD_CF_NO_INPUT;
                    hd_conn_finish(c, 1000);
                    d->http_closed++;
                }
            }
            size_t left = count_api(dr);
            if (left > 0) {
                if (in_phase < cfg->drain_http_ms) return;
                /* The phase's own budget ran out: what is left is cut. */
                hd_warn("drain: phase http overran its %llu ms budget: closing %zu HTTP connection(s)",
                        (unsigned long long)cfg->drain_http_ms, left);
                for (hd_conn *c = dr->net->conns; c; c = c->next)
                    if (api_conn(c)) {
                        d->forced++;
                        hd_conn_close(c);
                    }
            }
            enter(dr, HD_PHASE_FLUSH);
            /* Held messages go out early, never dropped; so do presence diffs. */
            hd_shaper_release_all(&dr->eng->shapers);
            hd_presence_flush(&dr->eng->pres);
            continue;
        case HD_PHASE_FLUSH:
            if (queued_anywhere(dr) && in_phase < cfg->drain_flush_ms) return;
            if (queued_anywhere(dr))
                hd_warn("drain: phase flush overran its %llu ms budget: disconnecting with frames "
                        "still queued", (unsigned long long)cfg->drain_flush_ms);
            enter(dr, HD_PHASE_DISCONNECT);
            d->allowance = 1;
            return; /* (the closes are paced from the next tick) */
        case HD_PHASE_DISCONNECT:
            if (cfg->drain_disconnect_sockets) {
                disconnect(dr, elapsed);
                if (dr->net->nconns + dr->net->nlp > 0) return;
            }
            enter(dr, HD_PHASE_PRESENCE);
            /* The peers drop this node's presence now, not after a timeout. */
            if (dr->cluster) hd_cluster_withdraw(dr->cluster);
            continue;
        case HD_PHASE_PRESENCE:
            /* Until Redis has taken the withdrawal (bounded by what is left of
             * the budget, and by PRESENCE_MS). */
            if (dr->cluster && hd_cluster_pending(dr->cluster) && hd_cluster_up(dr->cluster) &&
                in_phase < PRESENCE_MS && elapsed < cfg->drain_timeout_ms)
                return;
            finish(dr);
            continue;
        case HD_PHASE_STOPPED:
            uv_timer_stop(&dr->timer);
            dr->stop(dr->ud);
            return;
        default:
            return;
        }
    }
}

void hd_drain_init(hd_drain *dr, uv_loop_t *loop, const hd_config *cfg, hd_net *net,
                   hd_engine *eng, hd_scripts *sc)
{
    memset(dr, 0, sizeof *dr);
    dr->loop = loop;
    dr->cfg = cfg;
    dr->net = net;
    dr->eng = eng;
    dr->sc = sc;
    uv_timer_init(loop, &dr->timer);
    dr->timer.data = dr;
}

void hd_drain_start(hd_drain *dr, const char *reason)
{
    hd_info("drain: starting (%s); budget %llu ms", reason,
            (unsigned long long)dr->cfg->drain_timeout_ms);
    dr->stats.started_ms = uv_now(dr->loop);
    enter(dr, HD_PHASE_ANNOUNCE);
    uv_timer_start(&dr->timer, step, 0, TICK_MS);
}

void hd_drain_cancel(hd_drain *dr) { uv_timer_stop(&dr->timer); }

void hd_drain_close(hd_drain *dr, uv_close_cb cb, void *data)
{
    if (uv_is_closing((uv_handle_t *)&dr->timer)) return;
    dr->timer.data = data;
    uv_close((uv_handle_t *)&dr->timer, cb);
}

void hd_drain_metrics(const hd_drain *dr, hd_str *o)
{
    hd_metrics_gauge(o, "herald_drain_phase", "Drain phase: 0 none, 1 announce ... 7 stopped.", dr->phase);
    hd_str_adds(o, "# HELP herald_drain_phase_seconds How long each finished drain phase took.\n"
                   "# TYPE herald_drain_phase_seconds gauge\n");
    for (int p = HD_PHASE_ANNOUNCE; p < HD_PHASE_COUNT; p++)
        hd_str_printf(o, "herald_drain_phase_seconds{phase=\"%s\"} %.3f\n", hd_phase_name((hd_phase)p),
                      (double)dr->stats.duration_ms[p] / 1000.0);
    hd_metrics_counter(o, "herald_drain_http_closed_total", "Idle keep-alive connections closed by the drain.",
            dr->stats.http_closed);
    hd_metrics_counter(o, "herald_drain_ws_closed_total", "WebSockets closed with 1012 by the drain.",
            dr->stats.ws_closed);
    hd_metrics_counter(o, "herald_drain_longpoll_closed_total",
            "Long-poll sessions ended by the drain (their next poll is answered 410).",
            dr->stats.lp_closed);
    hd_metrics_counter(o, "herald_drain_forced_total", "Connections closed when the drain budget ran out.",
            dr->stats.forced);
}
