listen = { host = "127.0.0.1", port = 0 }
limits = { max_body_bytes = 10 }
mounts = { "/ws" }
topics = { { match = "a:*", tracked = false, throttle_ms = 5 } }
drain = { timeout_ms = 1000 }
local x = os.getenv("HOME")
