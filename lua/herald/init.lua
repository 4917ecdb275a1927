-- The herald API that operator scripts and plugins see, built over the C
-- binding (core/luapi.c and core/script.c). Loaded once per Lua state with
-- the C table as its argument; busted specs load it with the pure subset
-- (the Lua module herald.c), where the server-bound calls raise.
local c = ...
assert(type(c) == "table", "lua/herald/init.lua needs the C binding table")

local herald = {}

-- The C function name; public: the herald.* name an error should show.
local function need(name, public)
  local f = c[name]
  if f then return f end
  return function() error("herald." .. (public or name) .. " is not available outside the server", 2) end
end

local function check(cond, n, fname, msg)
  if not cond then error(("bad argument #%d to 'herald.%s' (%s)"):format(n, fname, msg), 3) end
end

herald.json = {
  encode = c.json_encode,   -- encode(v) -> text | nil, err
  decode = c.json_decode,   -- decode(text) -> v | nil, err
  null = c.null,            -- JSON null inside tables
}

local hex_digits = "0123456789abcdef"
local function to_hex(s)
  return (s:gsub(".", function(ch)
    local b = ch:byte()
    local hi, lo = math.floor(b / 16) + 1, b % 16 + 1
    return hex_digits:sub(hi, hi) .. hex_digits:sub(lo, lo)
  end))
end

herald.crypto = {
  hmac_sha256 = c.hmac_sha256,        -- (key, data) -> 32 raw bytes
  sha256 = c.sha256,                  -- (data) -> 32 raw bytes
  equal = c.ct_equal,                 -- constant-time string equality
  hex = to_hex,                       -- raw bytes -> lowercase hex
  b64_encode = c.b64_encode,
  b64url_encode = c.b64url_encode,    -- no padding
  b64_decode = c.b64_decode,          -- standard or URL-safe, padding optional; nil if invalid
}

herald.now = c.now                    -- seconds since the epoch (float)
herald.monotonic_ms = c.monotonic_ms

-- True when name matches the glob pattern: "*" matches any run of bytes
-- (also none), every other byte only itself (no Lua pattern magic). The
-- matcher of the config's topic rules (hd_glob_match in core/util.c).
function herald.glob(pattern, name)
  check(type(pattern) == "string", 1, "glob", "pattern must be a string")
  check(not pattern:find("\0", 1, true), 1, "glob", "pattern must not contain a NUL byte")
  check(type(name) == "string", 2, "glob", "name must be a string")
  return (c.glob(pattern, name))
end

function herald.publish(topic, event, data)
  check(type(topic) == "string", 1, "publish", "topic must be a string")
  check(type(event) == "string", 2, "publish", "event must be a string")
  return need("publish")(topic, event, data)
end

function herald.subscribers(topic)
  check(type(topic) == "string", 1, "subscribers", "topic must be a string")
  return need("subscribers")(topic)
end

function herald.disconnect(id, code)
  check(type(id) == "string" or type(id) == "number", 1, "disconnect", "id must be a string")
  check(code == nil or type(code) == "number", 2, "disconnect", "code must be a number")
  return need("disconnect")(tostring(id), code)
end

local Timer = {}
Timer.__index = Timer
function Timer:cancel() return need("timer_cancel", "Timer:cancel")(self.id) end

local function start(fname, ms, fn, rep)
  check(type(ms) == "number", 1, fname, "milliseconds expected")
  check(type(fn) == "function", 2, fname, "function expected")
  return setmetatable({ id = need("timer_start", fname)(ms, fn, rep) }, Timer)
end

function herald.after(ms, fn) return start("after", ms, fn, false) end
function herald.every(ms, fn) return start("every", ms, fn, true) end

local levels = { debug = true, info = true, warn = true, error = true }
function herald.log(level, ...)
  check(levels[level], 1, "log", 'level must be "debug", "info", "warn" or "error"')
  local parts = { ... }
  for i = 1, select("#", ...) do parts[i] = tostring(parts[i]) end
  need("log")(level, table.concat(parts, " ")) -- not a tail call: C reads the caller's line
end

function herald.node_id() return need("node_id")() end

-- The presence state of a topic on this node: { key = { metas = {...} } }.
function herald.presence(topic)
  check(type(topic) == "string", 1, "presence", "topic must be a string")
  return need("presence")(topic)
end

-- Replaces the socket's presence meta on topic (a join of the new meta and
-- a leave of the old under the same key, as Phoenix reports updates).
function herald.presence_update(socket, topic, meta)
  check(type(socket) == "table" and socket.conn_id, 1, "presence_update", "a socket table expected")
  check(type(topic) == "string", 2, "presence_update", "topic must be a string")
  check(type(meta) == "table", 3, "presence_update", "meta must be a table")
  return need("presence_update")(socket.conn_id, topic, meta)
end

-- Sets socket.assigns[key] to value (a JSON value; nil removes it), kept
-- with the socket in C for every later hook: from a hook, a timer, anywhere
-- a socket table is at hand. The table's own assigns, if read already,
-- follow.
function herald.assign(socket, key, value)
  check(type(socket) == "table" and socket.conn_id, 1, "assign", "a socket table expected")
  check(type(key) == "string", 2, "assign", "key must be a string")
  need("assign")(socket.conn_id, key, value)
  local a = rawget(socket, "assigns")
  if type(a) == "table" then a[key] = value end
  return true
end

-- An HTTP request to a backend, written as blocking code: the hook's
-- coroutine waits (the server serves everyone else meanwhile) and goes on
-- with the answer:
--   herald.http.request{ method = "POST", url = "http://127.0.0.1:8080/auth",
--                        headers = { ["content-type"] = "application/json" },
--                        body = "...", timeout_ms = 2000 }
--   -> { status = 200, headers = { [lower-case name] = value }, body = "..." }
--   or nil, err ("timeout", "connection refused", "response too large", ...)
-- Only http:// URLs. In hooks authenticate, join, message, api_auth,
-- publish, shutdown and timer callbacks; elsewhere (topic, init, leave,
-- disconnect) it raises.
herald.http = {}
function herald.http.request(opts)
  check(type(opts) == "table", 1, "http.request", "a table of options expected")
  check(type(opts.url) == "string", 1, "http.request", "url must be a string")
  local ok, err = need("http_start", "http.request")(opts)
  if not ok then return nil, err end
  return need("http_result", "http.request")()
end

-- True while the socket a hook was given is still connected.
function herald.connected(socket)
  check(type(socket) == "table" and socket.conn_id, 1, "connected", "a socket table expected")
  return need("socket_open")(socket.conn_id)
end

return herald
