-- An example Herald configuration. Every key is optional; the values shown
-- are the defaults unless the comment says otherwise.
-- Check it with:  herald check examples/herald.lua
-- Run it with:    herald -c examples/herald.lua

-- HERALD_HOST and HERALD_PORT (both optional) override the address, e.g.
-- in the systemd unit's EnvironmentFile.
listen = { host = os.getenv("HERALD_HOST") or "0.0.0.0", port = 4000 }

-- Bearer token for /api/*. Without one, /api/* answers loopback clients only.
api = { token = os.getenv("HERALD_API_TOKEN") }

-- WebSocket endpoints: PushEx clients use /push_socket, Phoenix ones /socket.
mounts = { "/push_socket", "/socket" }

limits = {
  max_connections = 100000,      -- WebSocket connections (capped by RLIMIT_NOFILE)
  max_message_bytes = 65536,     -- largest client message (close 1009 beyond)
  send_queue_bytes = 1048576,    -- per-connection outbound queue (close 1013 beyond)
  max_header_bytes = 16384,      -- HTTP 431 beyond
  max_url_bytes = 8192,          -- HTTP 414 beyond
  max_body_bytes = 1048576,      -- HTTP 413 beyond
  max_topics_per_socket = 100,   -- "too many channels joined" beyond
}

timeouts = {
  ws_idle_ms = 45000,            -- phoenix.js heartbeats every 30 s
  http_idle_ms = 60000,
  ws_close_ms = 5000,
}

log = { level = "info" }
