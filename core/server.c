#define _GNU_SOURCE /* memmem */
#include "server.h"
#include "embed.h"
#include "err.h"
#include "hooks.h"
#include "log.h"
#include "metrics.h"
#include "phx.h"
#include "util.h"
#include "ws.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void watch_scripts(hd_server *srv);
static void unwatch_scripts(hd_server *srv);

/* ---- the sweeper ---------------------------------------------------------------- */

/* Once a tick: close connections that are idle or past their closing
 * deadline. A linear walk; cheap next to the work each connection costs. */
static void on_sweep(uv_timer_t *t)
{
    hd_server *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    const hd_config *cfg = srv->cfg;
    for (hd_conn *c = srv->net.conns, *next; c; c = next) {
        next = c->next;
        if (c->flags & HD_CF_CLOSED) continue;
        int closing = c->flags & (HD_CF_FINISH | HD_CF_SHUTDOWN | HD_CF_WS_CLOSE_SENT);
        if (closing) {
            if (c->deadline && now >= c->deadline) hd_conn_close(c);
            continue;
        }
        if (c->kind == HD_CONN_LP) {
            continue; /* (its deadlines are longpoll.c's) */
        } else if (c->kind == HD_CONN_HTTP && hd_http_deferred(c)) {
            continue; /* its answer is ours to give (a held poll, a hook that waits) */
        } else if (c->kind == HD_CONN_WS) {
            if (hd_wsconn_check_message(c, now)) {
                continue;
            } else if (now - c->last_active >= cfg->ws_idle_ms) {
                srv->st.idle_closes++;
                hd_conn_shut(c, 1001, "idle timeout");
            }
        } else if (hd_http_check_head(c, now)) {
            continue;
        } else if (now - c->last_active >= cfg->http_idle_ms) {
            srv->st.idle_closes++;
            c->flags |= HD_CF_NO_INPUT;
            hd_conn_finish(c, 1000);
        }
    }
    if (cfg->connect_rate_per_ip) hd_net_sweep_peers(&srv->net);
    if (srv->eng.hist.count) hd_history_sweep(&srv->eng.hist, &srv->eng.topics, now);
}

static uint64_t sweep_interval(const hd_config *cfg)
{
    uint64_t t = cfg->ws_idle_ms;
    if (cfg->http_idle_ms < t) t = cfg->http_idle_ms;
    if (cfg->http_head_ms < t) t = cfg->http_head_ms;
    if (cfg->http_body_ms < t) t = cfg->http_body_ms;
    if (cfg->ws_message_ms < t) t = cfg->ws_message_ms;
    if (cfg->ws_close_ms < t) t = cfg->ws_close_ms;
    t /= 4;
    return t < 10 ? 10 : t > 1000 ? 1000 : t;
}

/* ---- the node's routes ------------------------------------------------------------ */

static void route_healthz(void *ud, hd_conn *c, hd_http_req *r)
{
    (void)ud;
    static const char ok[] = "{\"status\":\"ok\"}";
    hd_http_respond(c, r, 200, "application/json", ok, sizeof ok - 1, NULL, 0);
}

static void route_readyz(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_server *srv = ud;
    /* With cluster.required, READY waits for every Redis link too. */
    int waiting = srv->state == HD_READY && srv->clustered && srv->cfg->cluster_required &&
                  !hd_cluster_up(&srv->cluster);
    const char *s = waiting                       ? "{\"status\":\"waiting for the cluster\"}"
                    : srv->state == HD_READY      ? "{\"status\":\"ready\"}"
                    : srv->state == HD_STARTING ? "{\"status\":\"starting\"}"
                                                : "{\"status\":\"draining\"}";
    int ok = srv->state == HD_READY && !waiting;
    hd_http_respond(c, r, ok ? 200 : 503, "application/json", s, strlen(s), NULL, 0);
}

static void route_metrics(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_server *srv = ud;
    hd_str out = HD_STR_INIT;
    hd_metrics_render(&out, &srv->st, &srv->net, &srv->eng, &srv->sc);
    hd_metrics_gauge(&out, "herald_ready", "1 while the server is READY.", srv->state == HD_READY);
    hd_drain_metrics(&srv->drain, &out);
    if (srv->clustered) hd_cluster_metrics(&srv->cluster, &out);
    hd_http_respond(c, r, 200, "text/plain; version=0.0.4", out.p ? out.p : "", out.len, NULL, 0);
    hd_str_free(&out);
}

static void route_reload(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_server *srv = ud;
    char err[1024];
    if (hd_server_reload(srv, err, sizeof err)) return hd_http_error(c, r, 422, err, NULL, 0);
    hd_str out = HD_STR_INIT;
    hd_str_printf(&out, "{\"status\":\"ok\",\"generation\":%llu}",
                  (unsigned long long)srv->sc.ss.generation);
    hd_api_respond_json(c, r, 200, &out);
    hd_str_free(&out);
}

static void route_drain(void *ud, hd_conn *c, hd_http_req *r)
{
    static const char body[] = "{\"status\":\"draining\"}";
    /* Answer first: the drain turns this response's connection to close. */
    hd_http_respond(c, r, 202, "application/json", body, sizeof body - 1, NULL, 1);
    hd_server_drain(ud, "POST /admin/drain");
}

static const char *const state_names[] = {"starting", "ready", "draining", "stopped"};

/* The node's figures, as the fields of a JSON object (no braces): what
 * GET /admin/status answers, and what each push of herald:status starts
 * with. websocket tells a page served by the admin listener where the
 * WebSocket mounts are (the public port). */
static void status_fields(hd_server *srv, hd_str *out)
{
    hd_str_printf(out, "\"state\":\"%s\",\"phase\":\"%s\",\"node\":", state_names[srv->state],
                  hd_phase_name(srv->drain.phase));
    hd_str_add_json(out, srv->node_id, strlen(srv->node_id));
    hd_str_printf(out, ",\"connections\":%zu,\"longpoll_sessions\":%zu,\"topics\":%zu,\"scripts\":",
                  srv->net.nws, srv->net.nlp, srv->eng.topics.count);
    hd_script_status_json(&srv->sc, out);
    hd_str_adds(out, ",\"cluster\":");
    if (srv->clustered) hd_cluster_status_json(&srv->cluster, out);
    else hd_str_adds(out, "null");
    hd_str_printf(out, ",\"websocket\":{\"port\":%d,\"path\":", srv->port);
    const char *ws = srv->cfg->nmounts ? srv->cfg->ws_paths[0] : "";
    hd_str_add_json(out, ws, strlen(ws));
    if (srv->cfg->admin_host) hd_str_printf(out, "},\"admin_port\":%d", srv->admin_port);
    else hd_str_adds(out, "},\"admin_port\":null");
}

static void route_status(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_server *srv = ud;
    hd_str out = HD_STR_INIT;
    hd_str_addc(&out, '{');
    status_fields(srv, &out);
    hd_str_addc(&out, '}');
    hd_api_respond_json(c, r, 200, &out);
    hd_str_free(&out);
}

/* ---- the status feed: topic herald:status ------------------------------------------
 *
 * The status page (GET /admin) joins herald:status over the node's own
 * WebSocket and gets the figures pushed once a second, as Phoenix event
 * "status" (not "msg": a publish to the topic through the API or
 * herald.publish arrives as "msg", which the page does not read, so
 * nobody who may publish can fake the figures). The timer starts at the
 * topic's first subscriber (a topic observer) and stops at the first tick
 * that finds none. Joining takes what the admin routes take without an
 * api_auth hook: the API token in the join payload ({"token": ...}), or,
 * with no token configured, a loopback client; the join hooks run after
 * that check, and never see the token. */

#define STATUS_TOPIC "herald:status"
#define STATUS_TOPIC_LEN (sizeof STATUS_TOPIC - 1)
#define STATUS_TOP 10 /* the biggest topics shown */

/* Appends the STATUS_TOP topics with the most subscribers here, biggest
 * first, as a JSON array (one walk of the registry). */
static void top_topics(const hd_topics *t, hd_str *out)
{
    const hd_topic *top[STATUS_TOP];
    size_t n = 0;
    for (size_t i = 0; i < t->nslots; i++)
        for (const hd_topic *tp = t->slots[i]; tp; tp = tp->hnext) {
            if (n == STATUS_TOP && tp->nsubs <= top[n - 1]->nsubs) continue;
            size_t j = n < STATUS_TOP ? n++ : n - 1;
            for (; j > 0 && top[j - 1]->nsubs < tp->nsubs; j--)
                top[j] = top[j - 1];
            top[j] = tp;
        }
    hd_str_addc(out, '[');
    for (size_t i = 0; i < n; i++) {
        hd_str_adds(out, i ? ",{\"topic\":" : "{\"topic\":");
        hd_str_add_json(out, top[i]->name, top[i]->len);
        hd_str_printf(out, ",\"subscribers\":%u}", (unsigned)top[i]->nsubs);
    }
    hd_str_addc(out, ']');
}

static double per_second(uint64_t now_count, uint64_t then_count, double secs)
{
    return secs > 0 ? (double)(now_count - then_count) / secs : 0;
}

static void on_status_tick(uv_timer_t *t)
{
    hd_server *srv = t->data;
    hd_topic *tp = hd_topics_find(&srv->eng.topics, STATUS_TOPIC, STATUS_TOPIC_LEN);
    if (!tp || !tp->nsubs) {
        uv_timer_stop(t);
        return;
    }
    const hd_stats *st = &srv->st;
    uint64_t now = uv_now(srv->loop);
    /* (The first push after a pause has no rates: nothing to compare with.) */
    double secs =
        srv->status_at && now > srv->status_at ? (double)(now - srv->status_at) / 1000 : 0;
    hd_str out = HD_STR_INIT;
    hd_str_adds(&out, "[null,null,\"" STATUS_TOPIC "\",\"status\",{");
    status_fields(srv, &out);
    hd_str_printf(&out,
                  ",\"joins\":%llu,\"publishes\":%llu,\"deliveries\":%llu,\"joins_per_s\":%.2f,"
                  "\"publishes_per_s\":%.2f,\"top_topics\":",
                  (unsigned long long)st->joins, (unsigned long long)st->publishes,
                  (unsigned long long)st->deliveries,
                  per_second(st->joins, srv->status_joins, secs),
                  per_second(st->publishes, srv->status_publishes, secs));
    top_topics(&srv->eng.topics, &out);
    hd_str_adds(&out, "}]");
    hd_buf *f = out.oom ? NULL : hd_ws_frame(HD_WS_TEXT, out.p, out.len);
    if (f) {
        hd_topics_publish(&srv->eng.topics, tp, f);
        hd_buf_unref(f);
    } else {
        hd_error("status feed: out of memory building a push");
    }
    hd_str_free(&out);
    srv->status_at = now;
    srv->status_joins = st->joins;
    srv->status_publishes = st->publishes;
}

/* A topic got its first subscriber here (hd_topic_observer.on_first). */
static void status_first(void *ud, const char *topic, size_t tlen)
{
    hd_server *srv = ud;
    if (tlen != STATUS_TOPIC_LEN || memcmp(topic, STATUS_TOPIC, tlen) != 0 || srv->stopping) return;
    if (uv_is_active((uv_handle_t *)&srv->status_timer)) return;
    srv->status_at = 0;
    /* At once (next loop turn, behind the join's reply), then every second. */
    uv_timer_start(&srv->status_timer, on_status_tick, 0, 1000);
}

/* Whether c may join herald:status with payload (a JSON object). */
static int status_may_join(hd_server *srv, hd_conn *c, json_t *payload)
{
    const char *tok = srv->cfg->api_token;
    if (!tok) return hd_conn_is_loopback(c);
    json_t *t = json_object_get(payload, "token");
    return json_is_string(t) &&
           hd_ct_equal(json_string_value(t), json_string_length(t), tok, strlen(tok));
}

/* The join gate of channel.c (hd_join_gate): a join of herald:status
 * needs status_may_join, and goes on without its token. */
static const char *status_gate(void *ud, hd_conn *c, const char *topic, size_t tlen,
                               json_t *payload)
{
    hd_server *srv = ud;
    if (tlen != STATUS_TOPIC_LEN || memcmp(topic, STATUS_TOPIC, tlen) != 0) return NULL;
    if (!status_may_join(srv, c, payload)) return "unauthorized";
    json_object_del(payload, "token");
    return NULL;
}

/* Puts the join check in channel.c's joins and watches for the topic's
 * first subscriber. */
static void status_feed_init(hd_server *srv)
{
    uv_timer_init(srv->loop, &srv->status_timer);
    srv->status_timer.data = srv;
    srv->ch.join_gate = status_gate;
    srv->ch.gate_ud = srv;
    const hd_topic_observer o = {status_first, NULL, srv};
    if (hd_engine_observe_topics(&srv->eng, &o))
        hd_warn("status feed: no room for its topic observer");
}

/* ---- web assets: the status page, the demo page, phoenix.js -------------------------- */

/* Answers an embedded file of web/ (ud: its hd_embedded). phoenix.js
 * changes only with the binary and is cached; the pages revalidate, and
 * may load scripts and styles from here only (no inline script) while
 * opening WebSockets anywhere (the admin listener's page talks to the
 * public port). */
static void route_asset(void *ud, hd_conn *c, hd_http_req *r)
{
    const hd_embedded *e = ud;
    const char *dot = strrchr(e->name, '.');
    const char *type = !dot                        ? "application/octet-stream"
                       : strcmp(dot, ".html") == 0 ? "text/html; charset=utf-8"
                       : strcmp(dot, ".css") == 0  ? "text/css; charset=utf-8"
                                                   : "application/javascript; charset=utf-8";
    const char *headers =
        strcmp(e->name, "phoenix.js") == 0
            ? "Cache-Control: public, max-age=86400\r\nX-Content-Type-Options: nosniff\r\n"
            : "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"
              "Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:; "
              "img-src 'self' data:; frame-ancestors 'none'\r\n";
    hd_http_respond(c, r, 200, type, e->src, e->len, headers, 0);
}

/* Serves the embedded file name at path (nothing when the build lacks it). */
static void route_web(hd_server *srv, const char *path, const char *name, unsigned flags)
{
    const hd_embedded *e = hd_embedded_web_find(name);
    /* (ud is only ever read: the table is const) */
    if (e) hd_api_route(&srv->api, path, HD_ROUTE_GET | flags, route_asset, (void *)e);
}

/* The status page, with the admin routes; phoenix.js and the style on both
 * listeners; the demo page at / on the embedded default config only (a
 * deployment's / is its own business). */
static void web_routes(hd_server *srv)
{
    const unsigned node = HD_ROUTE_NODE, private = HD_ROUTE_NODE | HD_ROUTE_PRIVATE;
    route_web(srv, "/admin", "admin.html", private);
    route_web(srv, "/admin.js", "admin.js", private);
    route_web(srv, "/phoenix.js", "phoenix.js", node);
    route_web(srv, "/herald.css", "herald.css", node);
    if (strcmp(srv->cfg->source, "(embedded default)") == 0) {
        route_web(srv, "/", "demo.html", 0);
        route_web(srv, "/demo.js", "demo.js", 0);
    }
}

/* ---- lifecycle -------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    hd_server *srv = h->data;
    if (--srv->handles_open == 0) {
        srv->state = HD_STOPPED;
        if (srv->on_stopped) srv->on_stopped(srv);
    }
}

static void on_net_empty(hd_net *net) { hd_server_stop(net->data); }

static void close_listener(void *ud)
{
    hd_server *srv = ud;
    if (hd_listener_is_open(&srv->listener)) {
        /* Connections the kernel completed but we had not accepted yet would
         * be reset by the close: take them first, so every request that
         * reached this node is answered (with Connection: close). */
        if (srv->state == HD_DRAINING && !srv->stopping) hd_listener_take_backlog(&srv->listener);
        hd_listener_close(&srv->listener, on_handle_closed, srv);
    }
    unwatch_scripts(srv);
}

static void drain_done(void *ud) { hd_server_stop(ud); }

/* No new sockets, every answer closes its connection, no answers held. */
static void stop_taking(hd_server *srv)
{
    srv->ch.accepting = 0;
    srv->http.closing = 1;
    srv->net.hold = 0;
}

int hd_server_init(hd_server *srv, uv_loop_t *loop, const hd_config *cfg)
{
    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->cfg = cfg;
    srv->state = HD_STARTING;
    char host[32] = "herald";
    size_t hl = sizeof host;
    uv_os_gethostname(host, &hl);
    uint32_t rnd = 0;
    uv_random(NULL, NULL, &rnd, sizeof rnd, 0, NULL);
    /* A named node's id is its name and this incarnation's boot id: peers
     * drop an older incarnation's presence as soon as the new one speaks. */
    if (cfg->cluster_node) snprintf(srv->node_id, sizeof srv->node_id, "%s~%08x", cfg->cluster_node, rnd);
    else snprintf(srv->node_id, sizeof srv->node_id, "%s-%d-%08x", host, (int)uv_os_getpid(), rnd);
    /* What can fail comes first, before any handle joins the loop. */
    int rc = hd_engine_init(&srv->eng, loop, cfg, &srv->st, srv->node_id);
    if (rc) return rc;
    if (cfg->ncluster_urls) {
        rc = hd_cluster_init(&srv->cluster, loop, cfg, &srv->eng, srv->node_id);
        if (rc) {
            hd_engine_free(&srv->eng);
            return rc;
        }
        srv->clustered = 1;
    }
    hd_net_init(&srv->net, loop, cfg, &srv->st);
    srv->net.data = srv;
    srv->net.on_empty = on_net_empty;
    hd_scripts_init(&srv->sc, loop, cfg, &srv->eng, &srv->net, srv->node_id);
    /* The way up, registered here: topic policy asks the scripts. */
    srv->eng.pol.resolve = hd_hook_resolve;
    srv->eng.pol.resolve_ud = &srv->sc;
    hd_channel_init(&srv->ch, cfg, &srv->st, &srv->net, &srv->eng, &srv->sc);
    hd_api_init(&srv->api, cfg, &srv->st, &srv->eng, &srv->sc, &srv->ch);
    srv->api.net = &srv->net;
    srv->api.cluster = srv->clustered ? &srv->cluster : NULL;
    srv->ch.cluster = srv->clustered ? &srv->cluster : NULL;
    if (srv->clustered) { /* (a long poll may reach a session of another node) */
        srv->ch.lp.cluster = &srv->cluster;
        srv->ch.lp.node = srv->node_id;
        srv->cluster.on_node_message = hd_lp_node_message;
        srv->cluster.node_message_ud = &srv->ch.lp;
    }
    hd_http_init(&srv->http, cfg, &srv->st, hd_api_dispatch, &srv->api);
    srv->net.accept_ops = &srv->http.ops;
    stop_taking(srv); /* until READY */
    const unsigned node = HD_ROUTE_NODE, private = HD_ROUTE_NODE | HD_ROUTE_PRIVATE;
    hd_api_route(&srv->api, "/healthz", HD_ROUTE_GET | node, route_healthz, srv);
    hd_api_route(&srv->api, "/readyz", HD_ROUTE_GET | node, route_readyz, srv);
    hd_api_route(&srv->api, "/metrics", HD_ROUTE_GET | private, route_metrics, srv);
    hd_api_route(&srv->api, "/admin/reload", HD_ROUTE_POST | HD_ROUTE_AUTH | private, route_reload, srv);
    hd_api_route(&srv->api, "/admin/drain", HD_ROUTE_POST | HD_ROUTE_AUTH | private, route_drain, srv);
    hd_api_route(&srv->api, "/admin/status", HD_ROUTE_GET | HD_ROUTE_AUTH | private, route_status, srv);
    web_routes(srv);
    status_feed_init(srv);
    hd_drain_init(&srv->drain, loop, cfg, &srv->net, &srv->eng, &srv->sc);
    srv->drain.close_listener = close_listener;
    srv->drain.stop = drain_done;
    srv->drain.ud = srv;
    uv_timer_init(loop, &srv->sweeper);
    srv->sweeper.data = srv;
    srv->listener.fd = srv->admin.fd = -1;
    srv->drain.cluster = srv->clustered ? &srv->cluster : NULL;
    srv->drain.lp = &srv->ch.lp;
    /* sweeper, status timer, drain timer, presence timer, writer, spinner,
     * the long polls' timer (and the cluster's ticker and sync); each
     * listener once open */
    srv->handles_open = srv->clustered ? 9 : 7;
    return 0;
}

int hd_server_start(hd_server *srv)
{
    const hd_config *cfg = srv->cfg;
    /* Redis connects first (in the background): the listener opens last. */
    if (srv->clustered) hd_cluster_start(&srv->cluster);
    int rc = hd_listener_open(&srv->listener, &srv->net, cfg->host, cfg->port, cfg->reuseport, 0);
    if (rc) return rc;
    srv->handles_open++;
    srv->port = srv->listener.port;
    if (cfg->admin_host) {
        rc = hd_listener_open(&srv->admin, &srv->net, cfg->admin_host, cfg->admin_port, 0, 1);
        if (rc) return rc;
        srv->handles_open++;
        srv->admin_port = srv->admin.port;
    }
    hd_net_start(&srv->net);
    uint64_t iv = sweep_interval(cfg);
    uv_timer_start(&srv->sweeper, on_sweep, iv, iv);
    srv->state = HD_READY;
    srv->ch.accepting = 1;
    srv->http.closing = 0;
    srv->net.hold = 1;
    watch_scripts(srv);
    const char *shown = strchr(cfg->host, ':') ? "[%s]" : "%s";
    char host[80];
    snprintf(host, sizeof host, shown, cfg->host);
    /* Every mount, comma-separated; cut (with "...") only past what a log
     * line holds. */
    hd_str mounts = HD_STR_INIT;
    for (int k = 0; k < 2; k++) {
        char *const *paths = k ? cfg->lp_paths : cfg->ws_paths;
        size_t n = k ? cfg->nlp_paths : cfg->nmounts, i = 0;
        if (!n) continue;
        hd_str_adds(&mounts, k ? "LongPoll at " : "WebSocket at ");
        for (; i < n && mounts.len < 1024; i++) hd_str_printf(&mounts, "%s%s", i ? ", " : "", paths[i]);
        hd_str_adds(&mounts, i < n ? ", ...; " : "; ");
    }
    hd_info("listening on http://%s:%d (%.*sAPI at /api/push)", host, srv->port,
            (int)mounts.len, mounts.p ? mounts.p : "");
    hd_str_free(&mounts);
    if (cfg->admin_host) {
        snprintf(host, sizeof host, strchr(cfg->admin_host, ':') ? "[%s]" : "%s", cfg->admin_host);
        hd_info("admin listening on http://%s:%d (/metrics, /healthz, /readyz, /admin/*)", host,
                srv->admin_port);
    }
    return 0;
}

void hd_server_drain(hd_server *srv, const char *reason)
{
    if (srv->state != HD_READY) return;
    srv->state = HD_DRAINING;
    stop_taking(srv);
    hd_drain_start(&srv->drain, reason);
}

int hd_server_reload(hd_server *srv, char *err, size_t errlen)
{
    int rc = hd_script_reload(&srv->sc, err, errlen);
    if (rc || !srv->cfg->recheck_joins) return rc;
    size_t closed = 0;
    for (hd_conn *c = srv->net.conns; c; c = c->next)
        if (c->kind != HD_CONN_HTTP && hd_conn_open(c)) closed += hd_channel_recheck(&srv->ch, c);
    hd_info("reload: re-checked joins, closed %zu channel(s)", closed);
    return 0;
}

void hd_server_stop(hd_server *srv)
{
    if (srv->state == HD_STOPPED) return;
    if (!srv->stopping) {
        srv->stopping = 1;
        srv->state = HD_DRAINING;
        stop_taking(srv);
        close_listener(srv);
        hd_listener_close(&srv->admin, on_handle_closed, srv);
        hd_drain_cancel(&srv->drain);
        if (srv->net.nconns) hd_info("stopping: closing %zu connection(s)", srv->net.nconns);
        hd_net_close_all(&srv->net);
    }
    if (srv->net.nconns + srv->net.nlp > 0) return; /* called again by the last close */
    if (uv_is_closing((uv_handle_t *)&srv->sweeper)) return;
    hd_channel_free(&srv->ch); /* (parks cancel their runs while the runner is alive) */
    hd_script_stop(&srv->sc); /* the scripts' state and timers go last */
    uv_close((uv_handle_t *)&srv->sweeper, on_handle_closed);
    uv_close((uv_handle_t *)&srv->status_timer, on_handle_closed);
    hd_net_close_handles(&srv->net, on_handle_closed, srv);
    hd_engine_close(&srv->eng, on_handle_closed, srv);
    hd_drain_close(&srv->drain, on_handle_closed, srv);
    hd_channel_close(&srv->ch, on_handle_closed, srv);
    if (srv->clustered) hd_cluster_close(&srv->cluster, on_handle_closed, srv);
}

void hd_server_free(hd_server *srv)
{
    hd_channel_free(&srv->ch);
    hd_script_stop(&srv->sc);
    hd_net_free(&srv->net);
    if (srv->clustered) hd_cluster_free(&srv->cluster);
    hd_engine_free(&srv->eng);
}

/* ---- scripts.watch: reload when a script file changes ----------------------- */

typedef struct hd_watch {
    uv_fs_event_t ev;
    struct hd_watch *next;
    hd_server *srv;
} hd_watch;

static void free_watch(uv_handle_t *h) { free(h->data); }

static void on_watch_timer(uv_timer_t *t)
{
    hd_server *srv = t->data;
    char err[1024];
    hd_info("a script changed: reloading");
    hd_server_reload(srv, err, sizeof err);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)events;
    hd_watch *w = h->data;
    hd_server *srv = w->srv;
    if (status < 0 || !filename) return;
    /* Only the scripts themselves; editors touch other files too. */
    char dir[4096];
    size_t dl = sizeof dir;
    if (uv_fs_event_getpath(h, dir, &dl) != 0) return;
    for (size_t i = 0; i < srv->cfg->nscripts; i++) {
        const char *p = srv->cfg->scripts[i];
        const char *base = strrchr(p, '/');
        base = base ? base + 1 : p;
        if (strcmp(base, filename) == 0 && strncmp(p, dir, dl) == 0) {
            /* Debounce: an editor's save is several events. */
            uv_timer_start(srv->watch_timer, on_watch_timer, 150, 0);
            return;
        }
    }
}

static void watch_scripts(hd_server *srv)
{
    const hd_config *cfg = srv->cfg;
    if (!cfg->scripts_watch || !cfg->nscripts) return;
    srv->watch_timer = malloc(sizeof *srv->watch_timer);
    if (!srv->watch_timer) return;
    uv_timer_init(srv->loop, srv->watch_timer);
    srv->watch_timer->data = srv;
    for (size_t i = 0; i < cfg->nscripts; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", cfg->scripts[i]);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
        int seen = 0;
        for (hd_watch *w = srv->watches; w && !seen; w = w->next) {
            char p[4096];
            size_t pl = sizeof p;
            seen = uv_fs_event_getpath(&w->ev, p, &pl) == 0 && strcmp(p, dir) == 0;
        }
        if (seen) continue;
        hd_watch *w = calloc(1, sizeof *w);
        if (!w) return;
        w->srv = srv;
        uv_fs_event_init(srv->loop, &w->ev);
        w->ev.data = w;
        int rc = uv_fs_event_start(&w->ev, on_fs_event, dir, 0);
        if (rc) {
            hd_warn("scripts.watch: cannot watch %s: %s", dir, uv_strerror(rc));
            uv_close((uv_handle_t *)&w->ev, free_watch);
            continue;
        }
        w->next = srv->watches;
        srv->watches = w;
        hd_info("scripts.watch: watching %s", dir);
    }
}

static void free_handle(uv_handle_t *h) { free(h); }

static void unwatch_scripts(hd_server *srv)
{
    while (srv->watches) {
        hd_watch *w = srv->watches;
        srv->watches = w->next;
        uv_close((uv_handle_t *)&w->ev, free_watch);
    }
    if (srv->watch_timer) {
        uv_close((uv_handle_t *)srv->watch_timer, free_handle);
        srv->watch_timer = NULL;
    }
}
