#include "metrics.h"
#include "httpc.h"

#include <inttypes.h>

void hd_metrics_counter(hd_str *o, const char *name, const char *help, uint64_t v)
{
    hd_str_printf(o, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name,
                  name, v);
}

void hd_metrics_gauge(hd_str *o, const char *name, const char *help, uint64_t v)
{
    hd_str_printf(o, "# HELP %s %s\n# TYPE %s gauge\n%s %" PRIu64 "\n", name, help, name, name,
                  v);
}

void hd_metrics_render(hd_str *o, const hd_stats *m, const hd_net *net, const hd_engine *eng,
                       const hd_scripts *sc)
{
    const hd_config *cfg = net->cfg;
    hd_metrics_gauge(o, "herald_connections", "Open WebSocket connections.", net->nws);
    hd_metrics_gauge(o, "herald_tcp_connections", "Open TCP connections (HTTP and WebSocket).",
          net->nconns);
    hd_metrics_gauge(o, "herald_longpoll_sessions", "Open long-poll sessions.", net->nlp);
    hd_metrics_counter(o, "herald_longpoll_sessions_opened_total", "Long-poll sessions opened.",
            m->lp_opened);
    hd_metrics_counter(o, "herald_longpoll_sessions_expired_total",
            "Long-poll sessions closed after longpoll.window_ms without a poll.", m->lp_expired);
    hd_metrics_counter(o, "herald_longpoll_polls_total", "Polls of long-poll sessions.", m->lp_polls);
    hd_metrics_counter(o, "herald_longpoll_posts_total", "POSTs of messages to long-poll sessions.",
            m->lp_posts);
    hd_str_printf(o,
                  "# HELP herald_longpoll_tokens_rejected_total Long-poll tokens refused (410), by reason.\n"
                  "# TYPE herald_longpoll_tokens_rejected_total counter\n"
                  "herald_longpoll_tokens_rejected_total{reason=\"forged\"} %" PRIu64 "\n"
                  "herald_longpoll_tokens_rejected_total{reason=\"gone\"} %" PRIu64 "\n",
                  m->lp_forged, m->lp_gone);
    hd_str_printf(o,
                  "# HELP herald_longpoll_forwarded_total Long-poll requests for a session of another "
                  "node, sent there (out) or taken from there (in).\n"
                  "# TYPE herald_longpoll_forwarded_total counter\n"
                  "herald_longpoll_forwarded_total{direction=\"out\"} %" PRIu64 "\n"
                  "herald_longpoll_forwarded_total{direction=\"in\"} %" PRIu64 "\n",
                  m->lp_fwd_out, m->lp_fwd_in);
    hd_metrics_counter(o, "herald_longpoll_forward_timeouts_total",
            "Forwarded long-poll requests whose answer did not come back in time (answered 410).",
            m->lp_fwd_timeouts);
    hd_metrics_counter(o, "herald_longpoll_forward_cancels_total",
            "Polls forwarded here from another node that it gave up (its client left, or it "
            "drained): what comes for the session waits for the next poll.", m->lp_fwd_cancels);
    hd_metrics_counter(o, "herald_longpoll_forward_bad_total",
            "Other nodes' long-poll messages that could not be read.", m->lp_fwd_bad);
    hd_metrics_gauge(o, "herald_topics", "Topics with at least one subscriber on this node.",
          eng->topics.count);
    hd_metrics_counter(o, "herald_tcp_accepted_total", "TCP connections accepted.", m->tcp_accepted);
    hd_str_adds(o, "# HELP herald_tcp_refused_total Connections refused with 503, by reason.\n"
                   "# TYPE herald_tcp_refused_total counter\n");
    for (int i = 0; i < HD_REFUSE_COUNT; i++)
        hd_str_printf(o, "herald_tcp_refused_total{reason=\"%s\"} %" PRIu64 "\n", hd_refusal_label(i), m->tcp_refused[i]);
    hd_metrics_counter(o, "herald_http_requests_total", "HTTP requests answered.", m->http_requests);
    hd_metrics_counter(o, "herald_http_client_errors_total", "HTTP requests answered with a 4xx status.",
            m->http_errors_4xx);
    hd_metrics_counter(o, "herald_http_head_timeouts_total",
                       "Requests (or silent connections) answered 408: no complete head within "
                       "timeouts.http_head_ms.",
                       m->http_head_timeouts);
    hd_metrics_counter(o, "herald_http_body_timeouts_total",
                       "Requests answered 408: a body not complete within timeouts.http_body_ms.",
                       m->http_body_timeouts);
    hd_metrics_counter(o, "herald_http_inbound_limit_total",
                       "Requests answered 503 holding the largest partial body while all partial "
                       "bodies and WebSocket messages together were over limits.max_inbound_bytes.",
                       m->http_inbound_sheds);
    hd_metrics_counter(o, "herald_ws_upgrades_total", "WebSocket handshakes accepted.", m->ws_upgrades);
    hd_metrics_counter(o, "herald_ws_rejected_total", "WebSocket handshakes refused.", m->ws_rejected);
    hd_metrics_counter(o, "herald_ws_bad_origin_total",
                       "WebSocket handshakes refused for their Origin (ws.allowed_origins).",
                       m->ws_bad_origin);
    hd_metrics_counter(o, "herald_ws_message_timeouts_total",
                       "WebSocket connections closed (1008) because a frame or fragmented message "
                       "was not complete within timeouts.ws_message_ms.",
                       m->ws_message_timeouts);
    hd_metrics_counter(o, "herald_ws_inbound_limit_closes_total",
                       "WebSocket connections closed (1009) holding the largest partial message "
                       "while all partial messages together were over limits.max_inbound_bytes.",
                       m->ws_inbound_closes);
    hd_metrics_counter(o, "herald_ws_messages_total", "Phoenix messages received.", m->ws_msgs_in);
    hd_metrics_counter(o, "herald_ws_bad_messages_total",
            "Malformed WebSocket frames or Phoenix messages received.", m->ws_bad_msgs);
    hd_metrics_counter(o, "herald_client_messages_limited_total",
                       "Client messages refused (an error reply, not processed): over "
                       "limits.client_messages_per_s.",
                       m->client_msgs_limited);
    hd_metrics_counter(o, "herald_client_rate_closes_total",
                       "WebSocket connections closed (1008) because refused messages kept coming "
                       "for 5 s.",
                       m->client_rate_closes);
    hd_metrics_counter(o, "herald_joins_total", "Channel joins accepted.", m->joins);
    hd_metrics_gauge(o, "herald_history_streams", "Topics with a history kept in this node's memory (single node; a cluster keeps them in Redis).", eng->hist.count);
    hd_metrics_gauge(o, "herald_history_messages", "Messages kept in the histories.", eng->hist.messages);
    hd_metrics_gauge(o, "herald_history_bytes", "Bytes of the frames kept in the histories.", eng->hist.bytes);
    hd_str_printf(o,
                  "# HELP herald_recoveries_total Joins with since, by result.\n"
                  "# TYPE herald_recoveries_total counter\n"
                  "herald_recoveries_total{result=\"recovered\"} %" PRIu64 "\n"
                  "herald_recoveries_total{result=\"not_recovered\"} %" PRIu64 "\n",
                  eng->hist.recovered, eng->hist.not_recovered);
    hd_metrics_counter(o, "herald_joins_refused_total", "Channel joins refused.", m->joins_refused);
    hd_metrics_counter(o, "herald_publishes_total", "Messages published (one per topic of a push).",
            m->publishes);
    hd_metrics_counter(o, "herald_publishes_unheard_total",
            "Publishes to a topic with no subscriber on this node.", m->publishes_no_subs);
    hd_metrics_counter(o, "herald_deliveries_total", "Frames queued to subscribers.", m->deliveries);
    hd_str_printf(o,
                  "# HELP herald_dropped_total Frames not delivered, by reason.\n"
                  "# TYPE herald_dropped_total counter\n"
                  "herald_dropped_total{reason=\"slow_consumer\"} %" PRIu64 "\n"
                  "herald_dropped_total{reason=\"publish_hook\"} %" PRIu64 "\n"
                  "herald_dropped_total{reason=\"drop_oldest\"} %" PRIu64 "\n"
                  "herald_dropped_total{reason=\"binary_to_v1\"} %" PRIu64 "\n"
                  "herald_dropped_total{reason=\"no_v1_frame\"} %" PRIu64 "\n"
                  "herald_dropped_total{reason=\"binary_to_longpoll\"} %" PRIu64 "\n",
                  m->dropped_slow, sc->ss.publish_dropped, m->dropped_oldest, m->dropped_binary_v1,
                  m->dropped_no_v1, m->dropped_binary_lp);
    hd_metrics_counter(o, "herald_slow_consumer_closes_total",
            "Connections closed with 1013 because their send queue was full.", m->slow_closes);
    hd_metrics_counter(o, "herald_idle_closes_total", "Connections closed for idleness.", m->idle_closes);
    hd_metrics_counter(o, "herald_bytes_out_total", "Bytes written to sockets.", m->bytes_out);
    hd_metrics_counter(o, "herald_shaped_received_total", "Frames published to throttled/debounced topics.",
            m->shaped_received);
    hd_metrics_counter(o, "herald_shaped_released_total", "Shaped frames released to subscribers.",
            m->shaped_released);
    hd_metrics_counter(o, "herald_shaped_coalesced_total",
            "Shaped frames replaced by a newer one of the same event (coalesce = latest).",
            m->shaped_coalesced);
    hd_metrics_counter(o, "herald_shed_connections_total",
            "Connections closed (1013) to keep all queues under limits.max_queued_bytes.", m->shed);
    hd_metrics_counter(o, "herald_http_answers_held_total",
            "HTTP answers held back while a large fan-out was written (limits.fanout_backlog).",
            m->answers_held);
    hd_metrics_gauge(o, "herald_queued_bytes", "Bytes queued on all connections.", net->queued_bytes);
    hd_str_adds(o, "# HELP herald_topic_messages_total Publishes by topic pattern (config "
                   "topics rules; \"other\" for the rest): received (publishes to a topic with a "
                   "subscriber on this node), frames delivered, coalesced away.\n# TYPE herald_topic_messages_total counter\n");
    static const char *const kinds[HD_TC_COUNT] = {"received", "delivered", "coalesced"};
    for (size_t r = 0; eng->pol.counts && r <= cfg->ntopic_rules; r++) {
        hd_str pat = HD_STR_INIT;
        const char *pm = r ? cfg->topic_rules[r - 1].match : "other";
        /* A label value escapes backslash, quote and newline. */
        for (const char *q = pm; *q; q++) {
            if (*q == '\\' || *q == '"') hd_str_addc(&pat, '\\');
            hd_str_addc(&pat, *q == '\n' ? ' ' : *q);
        }
        for (int k = 0; k < HD_TC_COUNT; k++)
            hd_str_printf(o, "herald_topic_messages_total{pattern=\"%s\",kind=\"%s\"} %" PRIu64 "\n",
                          pat.p ? pat.p : "", kinds[k], eng->pol.counts[r][k]);
        hd_str_free(&pat);
    }
    hd_metrics_counter(o, "herald_presence_diffs_total",
            "presence_diff frames sent (one per topic per batch window).", m->presence_diffs);
    const hd_script_stats *ss = &sc->ss;
    hd_str_adds(o, "# HELP herald_hook_calls_total Lua hook calls that succeeded, by hook.\n"
                   "# TYPE herald_hook_calls_total counter\n");
    for (int h = 0; h < HD_HOOK_COUNT; h++)
        hd_str_printf(o, "herald_hook_calls_total{hook=\"%s\"} %" PRIu64 "\n",
                      hd_hook_name((hd_hook)h), ss->calls[h]);
    hd_str_adds(o, "# HELP herald_hook_errors_total Lua hook calls that failed (error, budget "
                   "or bad result); the safe default applied.\n"
                   "# TYPE herald_hook_errors_total counter\n");
    for (int h = 0; h < HD_HOOK_COUNT; h++)
        hd_str_printf(o, "herald_hook_errors_total{hook=\"%s\"} %" PRIu64 "\n",
                      hd_hook_name((hd_hook)h), ss->errors[h]);
    hd_str_printf(o, "herald_hook_errors_total{hook=\"timer\"} %" PRIu64 "\n", ss->timer_errors);
    hd_metrics_counter(o, "herald_hook_budget_exceeded_total",
            "Lua calls stopped for running over scripts.budget_ms.", ss->budget_exceeded);
    hd_str_printf(o,
                  "# HELP herald_reloads_total Script reloads, by result.\n"
                  "# TYPE herald_reloads_total counter\n"
                  "herald_reloads_total{result=\"ok\"} %" PRIu64 "\n"
                  "herald_reloads_total{result=\"error\"} %" PRIu64 "\n",
                  ss->reloads_ok, ss->reloads_failed);
    hd_metrics_gauge(o, "herald_scripts_generation", "Generation of the running scripts.", ss->generation);
    hd_metrics_gauge(o, "herald_script_states",
            "Lua states alive: the running scripts', and older ones whose hooks still wait.",
            sc->nstates);
    hd_metrics_gauge(o, "herald_hooks_waiting", "Hook calls waiting for I/O (herald.http.request).",
            sc->nwaiting);
    hd_metrics_gauge(o, "herald_lua_memory_bytes",
            "Bytes the scripts' Lua states hold, garbage not yet collected included.",
            hd_script_memory(sc));
    hd_metrics_counter(o, "herald_hook_io_timeouts_total",
            "Hook calls abandoned after waiting longer than scripts.io_timeout_ms.", ss->io_timeouts);
    hd_metrics_counter(o, "herald_hooks_discarded_total",
            "Hook runs whose socket or request closed while they waited (results discarded).",
            ss->discarded);
    hd_metrics_counter(o, "herald_lua_http_requests_total", "herald.http.request calls.",
            ss->http_requests);
    hd_metrics_counter(o, "herald_lua_http_errors_total",
            "herald.http.request calls that returned nil, err.", ss->http_errors);
    const hd_httpc_stats *hs = sc->httpc ? hd_httpc_stats_of(sc->httpc) : NULL;
    hd_metrics_gauge(o, "herald_lua_http_connections",
            "Connections herald.http.request keeps open to backends.", hs ? hs->open_conns : 0);
    hd_metrics_gauge(o, "herald_lua_http_in_flight", "herald.http.request calls waiting for their answer.",
            hs ? hs->in_flight : 0);
    hd_metrics_counter(o, "herald_lua_http_timeouts_total",
            "herald.http.request calls whose timeout_ms passed.", hs ? hs->timeouts : 0);
    hd_metrics_counter(o, "herald_lua_http_reused_total",
            "herald.http.request calls sent on a kept-alive connection.", hs ? hs->reused : 0);
    hd_str_adds(o, "# HELP herald_ws_closes_sent_total WebSocket close frames sent, by code.\n"
                   "# TYPE herald_ws_closes_sent_total counter\n");
    for (int i = 0; i < 16; i++)
        if (m->ws_closes_sent[i])
            hd_str_printf(o, "herald_ws_closes_sent_total{code=\"%d\"} %" PRIu64 "\n", 1000 + i,
                          m->ws_closes_sent[i]);
}
