-- examples/convention/herald.lua: the convention (README.md here).
--
--   export HERALD_JWT_SECRET=some-long-random-string
--   build/herald -c examples/convention/herald.lua
--
-- Participants connect with a JWT (HS256 under HERALD_JWT_SECRET; claims
-- sub, name, role), join convention:main, tallies and hall, and vote with a
-- push; convention.lua tallies. The crowd script runs this config and,
-- for comparison, the same with the tallies rule replaced by one without
-- the debounce (every vote sent to everyone).
listen = { host = "127.0.0.1", port = 4000 }   -- HERALD_PORT overrides the port
api = { token = os.getenv("HERALD_API_TOKEN") } -- unset: /api/push from loopback only
mounts = { "/socket" }
limits = { max_connections = 19000 }            -- under this machine's 20,000 open files
plugins = {
  { "jwt", secret = os.getenv("HERALD_JWT_SECRET") },   -- required: no token, no socket
}
scripts = { "convention.lua" }
topics = {
  -- The big public topic: no presence entry per join (the tracker-exempt rule).
  { match = "convention:main", tracked = false },
  -- Every vote publishes the counts here. Held until the votes pause for
  -- 200 ms, at most 1 s, and only the latest counts go out: a burst of
  -- 3,000 votes is a few frames per subscriber, not 3,000.
  { match = "tallies", tracked = false, debounce_ms = 200, max_wait_ms = 1000, coalesce = "latest" },
  -- Who is in the room: tracked (GET /api/presence/hall), but no presence
  -- events to the participants; convention.lua sends the list to the
  -- admins on hall:admin, batched.
  { match = "hall", tracked = true, presence = false },
  { match = "hall:admin", tracked = false },
}
