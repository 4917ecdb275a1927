-- examples/policy.lua: an operator script that uses every hook.
-- Enable it from a config:   scripts = { "policy.lua" }
-- Check it without starting: herald check examples/policy-config.lua
local M = {}

local API_KEY = os.getenv("HERALD_POLICY_API_KEY") or "dev-key"
local started_at

-- Runs once when the scripts load; returning false refuses the load (a
-- reload then keeps the previous scripts in force).
function M.init()
  started_at = herald.now()
  -- A repeating timer: cancelled automatically when the scripts reload.
  herald.every(60000, function()
    herald.publish("system:clock", "tick", { at = herald.now() })
  end)
  return true
end

-- A WebSocket connects. Identity and assigns stay with the socket in C.
function M.authenticate(req)
  local token = req.params.token or req.token
  if not token then return nil, "missing token" end
  -- "user:<name>:<hex hmac>" signed with the shared key (a JWT is the
  -- plugins/jwt.lua way; this shows the crypto primitives).
  local name, mac = token:match("^user:([%w_]+):(%x+)$")
  if not name then return nil, "bad token" end
  local want = herald.crypto.hex(herald.crypto.hmac_sha256(API_KEY, name))
  if not herald.crypto.equal(want, mac) then return nil, "bad token" end
  return { id = "user:" .. name, assigns = { name = name, admin = name == "admin" } }
end

-- A client joins a topic.
function M.join(socket, topic, payload)
  if topic:match("^private:") and topic ~= "private:" .. socket.id then
    return false, "unauthorized"
  end
  if topic:match("^admin:") and not socket.assigns.admin then
    return false, "admins only"
  end
  -- The reply reaches the client; meta joins its presence entry.
  return true, { reply = { welcome = socket.assigns.name }, meta = { device = payload.device } }
end

-- Every /api and /admin request: a second key besides api.token.
function M.api_auth(req)
  if req.headers["x-policy-key"] == API_KEY then return true end
  -- nothing: the static token rule decides
end

-- Once per topic (cached until reload): policy knobs.
function M.topic(name)
  if name:match("^room:") then return { presence = true } end
  if name:match("^ticker:") then return { throttle_ms = 250, coalesce = "latest" } end
  if name:match("^public:") then return { tracked = false, on_overflow = "drop_oldest" } end
end

-- Before fan-out: change or drop.
function M.publish(msg)
  if msg.event == "internal" then return false end        -- counted as dropped
  if type(msg.data) == "table" then msg.data.relayed_at = herald.now() end
  return msg
end

-- A client push on a joined topic: answer it, or broadcast it.
function M.message(socket, topic, event, payload)
  if event == "ping" then return { pong = true, uptime = herald.now() - started_at } end
  if event == "say" and topic:match("^room:") then
    -- herald.publish from Lua skips the publish hooks (no recursion).
    herald.publish(topic, "said", { from = socket.id, text = tostring(payload.text) })
    return true
  end
  return false, "unknown event"
end

-- Each drain phase; publishes here still reach clients before they go.
function M.shutdown(phase)
  herald.log("info", "drain phase", phase)
  if phase == "flush" then herald.publish("system:clock", "bye", { node = herald.node_id() }) end
end

return M
