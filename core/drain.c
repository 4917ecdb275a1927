#include "drain.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "presence.h"
#include "script.h"
#include "shaper.h"
#include "server.h"

#define TICK_MS 10

static const char *const names[HD_PHASE_COUNT] = {
    "none", "announce", "stop_accepting", "http", "flush", "disconnect", "presence", "stopped",
};

const char *hd_phase_name(hd_phase p) { return p < HD_PHASE_COUNT ? names[p] : "?"; }

static void enter(hd_server *srv, hd_phase p)
{
    uint64_t now = uv_now(srv->loop);
    hd_drain_stats *d = &srv->drain;
    if (srv->phase != HD_PHASE_NONE) {
        d->duration_ms[srv->phase] = now - d->phase_started_ms;
        hd_info("drain: phase %s done in %llu ms", names[srv->phase],
                (unsigned long long)d->duration_ms[srv->phase]);
    }
    srv->phase = p;
    d->phase_started_ms = now;
    hd_script_shutdown(srv, names[p]);
}

static int queued_anywhere(hd_server *srv)
{
    for (hd_conn *c = srv->conns; c; c = c->next)
        if (!(c->flags & HD_CF_CLOSED) && c->wq_bytes > 0) return 1;
    return 0;
}

static size_t count_kind(hd_server *srv, int kind)
{
    size_t n = 0;
    for (hd_conn *c = srv->conns; c; c = c->next)
        if (!(c->flags & HD_CF_CLOSED) && c->kind == kind) n++;
    return n;
}

/* Closes what is left now: the budget ran out. */
static void force_all(hd_server *srv)
{
    for (hd_conn *c = srv->conns; c; c = c->next) {
        if (c->flags & HD_CF_CLOSED) continue;
        srv->drain.forced++;
        for (hd_wq_item *it = c->wq_head; it; it = it->next) srv->drain.lost_frames++;
        hd_conn_close(c);
    }
}

static void finish(hd_server *srv)
{
    enter(srv, HD_PHASE_STOPPED);
    uv_timer_stop(&srv->drain_timer);
    hd_drain_stats *d = &srv->drain;
    hd_info("drain: complete in %llu ms (%llu HTTP and %llu WebSocket connections closed, "
            "%llu forced)",
            (unsigned long long)(uv_now(srv->loop) - d->started_ms),
            (unsigned long long)d->http_closed, (unsigned long long)d->ws_closed,
            (unsigned long long)d->forced);
    hd_server_stop(srv);
}

static void step(uv_timer_t *t)
{
    hd_server *srv = t->data;
    const hd_config *cfg = srv->cfg;
    hd_drain_stats *d = &srv->drain;
    uint64_t now = uv_now(srv->loop);
    uint64_t elapsed = now - d->started_ms, in_phase = now - d->phase_started_ms;

    if (elapsed >= cfg->drain_timeout_ms && srv->phase < HD_PHASE_PRESENCE) {
        d->overran = 1;
        hd_warn("drain: phase %s overran the %llu ms budget by %llu ms: closing %zu "
                "connection(s) now",
                names[srv->phase], (unsigned long long)cfg->drain_timeout_ms,
                (unsigned long long)(elapsed - cfg->drain_timeout_ms), srv->nconns);
        force_all(srv);
        enter(srv, HD_PHASE_PRESENCE);
        finish(srv);
        return;
    }

    switch (srv->phase) {
    case HD_PHASE_ANNOUNCE:
        if (in_phase < cfg->drain_announce_ms) return;
        enter(srv, HD_PHASE_STOP_ACCEPTING);
        hd_server_close_listener(srv);
        enter(srv, HD_PHASE_HTTP);
        /* fall through */
    case HD_PHASE_HTTP:
        for (hd_conn *c = srv->conns; c; c = c->next) {
            if (c->kind != HD_CONN_HTTP || !hd_conn_open(c)) continue;
            int idle = (!c->http || !c->http->busy) && c->wq_bytes == 0 &&
                       now - c->last_active >= cfg->drain_http_idle_ms;
            if (idle) {
                c->flags |= HD_CF_NO_INPUT;
                hd_conn_finish(c, 1000);
                d->http_closed++;
            }
        }
        if (count_kind(srv, HD_CONN_HTTP) > 0) {
            if (in_phase < cfg->drain_http_ms) return;
            /* The phase's own budget ran out: what is left is cut. */
            size_t left = count_kind(srv, HD_CONN_HTTP);
            hd_warn("drain: phase http overran its %llu ms budget: closing %zu HTTP connection(s)",
                    (unsigned long long)cfg->drain_http_ms, left);
            for (hd_conn *c = srv->conns; c; c = c->next)
                if (c->kind == HD_CONN_HTTP && !(c->flags & HD_CF_CLOSED)) {
                    d->forced++;
                    hd_conn_close(c);
                }
        }
        enter(srv, HD_PHASE_FLUSH);
        /* Held messages go out early, never dropped; so do presence diffs. */
        hd_shaper_release_all(srv);
        hd_presence_flush(srv);
        /* fall through */
    case HD_PHASE_FLUSH:
        if (queued_anywhere(srv) && in_phase < cfg->drain_flush_ms) return;
        if (queued_anywhere(srv))
            hd_warn("drain: phase flush overran its %llu ms budget: disconnecting with frames "
                    "still queued", (unsigned long long)cfg->drain_flush_ms);
        enter(srv, HD_PHASE_DISCONNECT);
        d->allowance = 1;
        return;
    case HD_PHASE_DISCONNECT: {
        if (cfg->drain_disconnect_sockets) {
            /* Pace: at most drain.disconnect_rate closes per second, but fast
             * enough to finish within 80% of what is left of the budget. */
            double left_s = (double)(cfg->drain_timeout_ms - elapsed) / 1000.0 * 0.8;
            size_t open = 0;
            for (hd_conn *c = srv->conns; c; c = c->next)
                if (c->kind == HD_CONN_WS && hd_conn_open(c)) open++;
            double rate = (double)cfg->drain_disconnect_rate;
            if (left_s > 0 && open / left_s > rate) rate = open / left_s;
            d->allowance += rate * TICK_MS / 1000.0;
            if (d->allowance > rate * TICK_MS / 1000.0 + 1) d->allowance = rate * TICK_MS / 1000.0 + 1;
            for (hd_conn *c = srv->conns; c && d->allowance >= 1; c = c->next) {
                if (c->kind != HD_CONN_WS || !hd_conn_open(c)) continue;
                hd_conn_ws_close(c, 1012, "server restart");
                d->ws_closed++;
                d->allowance -= 1;
            }
        }
        if (cfg->drain_disconnect_sockets && srv->nconns > 0) return;
        enter(srv, HD_PHASE_PRESENCE);
        finish(srv);
        return;
    }
    default:
        return;
    }
}

void hd_drain_start(hd_server *srv, const char *reason)
{
    if (srv->state != HD_READY) return;
    hd_info("drain: starting (%s); budget %llu ms", reason,
            (unsigned long long)srv->cfg->drain_timeout_ms);
    srv->state = HD_DRAINING;
    srv->drain.started_ms = uv_now(srv->loop);
    enter(srv, HD_PHASE_ANNOUNCE);
    uv_timer_start(&srv->drain_timer, step, 0, TICK_MS);
}
