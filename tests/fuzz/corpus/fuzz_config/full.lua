listen = { host = '127.0.0.1', port = 0 }
api = { token = 'secret' }
mounts = { '/socket', '/' }
limits = { max_message_bytes = 4096, max_body_bytes = 1000, max_topics_per_socket = 5 }
timeouts = { ws_idle_ms = 1000, http_idle_ms = 500, ws_close_ms = 100 }
log = { level = 'debug' }
reload = { recheck_joins = true }
drain = { timeout_ms = 1000, announce_ms = 10, disconnect_sockets = false }
presence = { batch_ms = 5 }
topics = { { match = 'p:*', presence = true, throttle_ms = 5, coalesce = 'latest' },
           { match = '*', tracked = false, on_overflow = 'drop_oldest', max_queue_bytes = 100 } }
scripts = { 'policy.lua', budget_ms = 20, watch = false }
plugins = { jwt = { secret = 'x', assigns_claims = { 'a', 'b' } }, big_topics = { patterns = { 'p:*' } },
            topic_acl = { rules = { { match = 'u:{id}', allow = { role = 'admin', n = 1, ok = true } } } },
            rate_limit = true }
