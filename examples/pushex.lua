-- examples/pushex.lua: the PushEx-style setup, with built-in plugins only.
--
--   HERALD_JWT_SECRET=... HERALD_API_TOKEN=... herald -c examples/pushex.lua
--
--  * clients connect to /push_socket/websocket with a JWT signed by the
--    application backend (HS256 with HERALD_JWT_SECRET), as ?token=... or
--    phoenix.js's authToken; the "sub" claim is the socket's identity and
--    the claims are its assigns. No token or a bad one: HTTP 403;
--  * "user:<sub>" topics are private to that user, "public:*" topics are
--    open to every connected client, anything else is refused;
--  * public topics are untracked: no per-join bookkeeping, and
--    /api/topics/public:... always answers "listening";
--  * backends publish with POST /api/push (PushEx's body shape) and the
--    bearer token.
-- Without HERALD_JWT_SECRET herald refuses to start (`herald check` says
-- so too): plugins.jwt.secret is required, there is no default secret.
listen = { host = "0.0.0.0", port = 4000 }
api = { token = os.getenv("HERALD_API_TOKEN") }
mounts = { "/push_socket" }
timeouts = { ws_idle_ms = 45000 }   -- PushEx's 45 s (Heroku-friendly)
-- Plugins run in the order listed (plugins/README.md).
plugins = {
  { "jwt", secret = os.getenv("HERALD_JWT_SECRET"), id_claim = "sub", leeway_s = 30 },
  { "topic_acl",
    rules = {
      { match = "user:{id}", allow = "owner" },
      { match = "public:*", allow = "all" },
    },
    default = "deny",
  },
  { "big_topics", patterns = { "public:*" } },
}
