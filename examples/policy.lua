-- examples/policy.lua: an operator script that uses every hook.
--
-- Enable it from a config:    scripts = { "policy.lua" }
-- Check it without starting:  herald check examples/policy-config.lua
--
-- A script returns a table of hook functions; every hook is optional. Each
-- call runs under pcall and a time budget: an error is logged with this
-- file's name and line and the hook's safe default applies. Globals are an
-- allow-list (string, table, math, bit, os.time/clock/date/getenv, the base
-- functions and `herald`), so there is no require, io or debug here.
local M = {}

-- Tokens are "user:<name>:<hex HMAC-SHA256 of name>" signed with this key
-- (a JWT is the plugins/jwt.lua way; this shows the crypto primitives).
local SIGNING_KEY = os.getenv("HERALD_POLICY_SIGNING_KEY") or "dev-key"
-- Requests to /api and /admin carrying "x-policy-key: <this>" are allowed
-- besides the api.token bearer token. Unset: no such key.
local ADMIN_KEY = os.getenv("HERALD_POLICY_ADMIN_KEY")

local LOOPBACK = { ["127.0.0.1"] = true, ["::1"] = true, ["::ffff:127.0.0.1"] = true }
local started_at

-- Runs once when the scripts load (start-up and each reload). Returning
-- false, "reason" refuses the load: start-up fails, a reload keeps the
-- previous scripts in force.
function M.init()
  if ADMIN_KEY == "" then return false, "HERALD_POLICY_ADMIN_KEY is set but empty" end
  if SIGNING_KEY == "dev-key" then
    herald.log("warn", "HERALD_POLICY_SIGNING_KEY is not set; using the development key")
  end
  started_at = herald.now()
  -- A repeating timer. Timers belong to this generation of the scripts and
  -- are cancelled when they reload.
  herald.every(60000, function()
    if herald.subscribers("system:clock") > 0 then
      herald.publish("system:clock", "tick", { at = herald.now(), node = herald.node_id() })
    end
  end)
  return true
end

-- A WebSocket connects (before the 101). req.params is the query string,
-- req.headers has lower-case names, req.token is phoenix.js's authToken.
-- Return the identity and assigns (kept with the socket in C), refuse with
-- nil/false and a reason (HTTP 403 {"error": reason}), or return nothing to
-- leave the decision to the next script.
function M.authenticate(req)
  local token = req.params.token or req.token
  if not token then return nil, "missing token" end
  local name, mac = token:match("^user:([%w_]+):(%x+)$")
  if not name then return nil, "bad token" end
  local want = herald.crypto.hex(herald.crypto.hmac_sha256(SIGNING_KEY, name))
  if not herald.crypto.equal(want, mac:lower()) then return nil, "bad token" end
  return { id = "user:" .. name, assigns = { name = name, admin = name == "admin" } }
end

-- A client joins a topic (phx_join). socket.id is the identity from
-- authenticate, socket.assigns its assigns. Return true (optionally with a
-- reply for the client and a presence meta), false and a reason to refuse,
-- or nothing to let the next script decide.
function M.join(socket, topic, payload)
  if topic:match("^private:") and topic ~= "private:" .. socket.id then
    return false, "unauthorized"
  end
  if topic:match("^admin:") and not socket.assigns.admin then
    return false, "admins only"
  end
  local device = type(payload) == "table" and type(payload.device) == "string" and payload.device or "unknown"
  return true, { reply = { welcome = socket.assigns.name }, meta = { device = device } }
end

-- Every /api and /admin request. true allows, false refuses (403), nothing
-- leaves it to the api.token rule (loopback only when no token is set).
function M.api_auth(req)
  if ADMIN_KEY and herald.crypto.equal(req.headers["x-policy-key"] or "", ADMIN_KEY) then
    return true
  end
  -- The admin endpoints (reload, drain) only from this machine.
  if req.path:match("^/admin/") and not LOOPBACK[req.remote_addr] then
    return false
  end
end

-- Once per topic name (the result is cached until the next reload): its
-- delivery policy. Tables from several scripts merge; nil = no opinion.
-- herald.publish and herald.disconnect are not available in this hook.
function M.topic(name)
  if name:match("^room:") then return { presence = true } end
  -- At most one "ticker" message every 250 ms, the latest one wins.
  if name:match("^ticker:") then return { throttle_ms = 250, coalesce = "latest" } end
  -- Huge fan-out: no per-socket tracking; a slow client loses old messages
  -- instead of being disconnected.
  if name:match("^public:") then return { tracked = false, on_overflow = "drop_oldest" } end
end

-- Each message published through the HTTP API, before fan-out. Return the
-- message (changed or not) or false to drop it (counted as
-- herald_dropped_total{reason="publish_hook"}).
function M.publish(msg)
  if msg.event == "internal" then return false end
  if type(msg.data) == "table" then msg.data.relayed_at = herald.now() end
  return msg
end

-- A client push on a joined topic. Return a table (an ok reply with it),
-- true (ok, {}), false and a reason (an error reply), or nothing.
function M.message(socket, topic, event, payload)
  if type(payload) ~= "table" then payload = {} end
  if event == "ping" then
    return { pong = true, uptime = herald.now() - started_at }
  end
  if event == "who" then
    return { listeners = herald.subscribers(topic) }
  end
  if event == "say" and topic:match("^room:") then
    -- herald.publish from Lua skips the publish hooks (no recursion).
    herald.publish(topic, "said", { from = socket.id, text = tostring(payload.text) })
    return true
  end
  if event == "remind_me" then
    -- Answer later, if the client is still there by then.
    local delay = math.min(tonumber(payload.in_ms) or 1000, 60000)
    herald.after(delay, function()
      if herald.connected(socket) then
        herald.publish("private:" .. socket.id, "reminder", { topic = topic })
      end
    end)
    return true
  end
  if event == "kick" and socket.assigns.admin and type(payload.id) == "string" then
    -- Close every socket of that identity (4000: an application code).
    return { closed = herald.disconnect(payload.id, 4000) }
  end
  return false, "unknown event"
end

-- A channel is left: phx_leave, a rejoin of the same topic, a reload's
-- recheck refusing it, or the socket closing (then once per joined topic,
-- before disconnect). The result is ignored.
function M.leave(socket, topic)
  herald.log("debug", "left", topic, socket.id)
end

-- A socket closed ("closed" by the client or the network, else why:
-- "idle timeout", "disconnected", "server restart", ...). The result is
-- ignored; the place to drop per-socket state (plugins/rate_limit.lua).
function M.disconnect(socket, reason)
  herald.log("debug", "gone", socket.id, reason)
end

-- Each phase of a drain (announce, stop_accepting, http, flush, disconnect,
-- presence, stopped). Messages published here still reach clients that are
-- connected.
function M.shutdown(phase)
  herald.log("info", "drain phase", phase)
  if phase == "announce" then
    herald.publish("system:clock", "draining", { node = herald.node_id() })
  elseif phase == "flush" then
    herald.publish("system:clock", "bye", { node = herald.node_id() })
  end
end

return M
