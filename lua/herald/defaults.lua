-- The embedded default configuration: what `herald` runs with no -c FILE.
-- Single node, port 4000 (HERALD_PORT overrides), both PushEx and Phoenix
-- mounts, and no authentication beyond the API's loopback-only rule unless
-- HERALD_API_TOKEN is set.
listen = { host = "0.0.0.0", port = 4000 }
api = { token = os.getenv("HERALD_API_TOKEN") }
mounts = { "/push_socket", "/socket" }
