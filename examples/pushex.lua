-- examples/pushex.lua: the PushEx-style setup.
--  * clients connect to /push_socket with a server-signed JWT
--    (?token=... or phoenix.js authToken), HS256 with HERALD_JWT_SECRET;
--  * "user:<id>" topics are private to their user, "public:*" to everyone;
--  * public topics are untracked: no per-join tracking cost, "is anyone
--    listening" always yes;
--  * backends publish with POST /api/push and the bearer token.
listen = { host = "0.0.0.0", port = 4000 }
api = { token = os.getenv("HERALD_API_TOKEN") }
mounts = { "/push_socket" }
timeouts = { ws_idle_ms = 45000 }   -- PushEx's 45 s (Heroku-friendly)
plugins = {
  jwt = { secret = os.getenv("HERALD_JWT_SECRET") or "change-me", id_claim = "sub" },
  topic_acl = {
    rules = {
      { match = "user:{id}", allow = "owner" },
      { match = "public:*", allow = "all" },
    },
    default = "deny",
  },
  big_topics = { patterns = { "public:*" } },
}
