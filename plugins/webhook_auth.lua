-- plugins/webhook_auth.lua: a backend over HTTP decides connects and joins
-- (Centrifugo's connect and subscribe proxy).
--   webhook_auth = { connect_url = "http://127.0.0.1:8080/herald/connect",
--                    join_url = "http://127.0.0.1:8080/herald/join",
--                    params = { "user" }, headers = { "x-tenant" },
--                    timeout_ms = 3000, on_failure = "refuse",
--                    auth_token = os.getenv("HERALD_WEBHOOK_TOKEN") }
-- Each connect (with connect_url) and each join (with join_url) is a POST of
-- a JSON object; the backend answers 200 {"allow": true, ...} or
-- {"allow": false, "reason": "..."}. Anything else is a failure, which
-- on_failure decides. The hooks wait for the answer with
-- herald.http.request (the socket's later messages wait behind it; other
-- sockets are served meanwhile). The decisions are pure functions on the
-- plugin table (plugin._decide and the request bodies), for the specs.
local plugin = {}

-- The scheme://host[:port] of an http:// URL, or nil. Logs show only this:
-- the path and query may hold secrets.
function plugin._origin(url)
  local authority = url:match("^http://([^/?#]+)")
  if not authority then return nil end
  return "http://" .. authority:gsub("^.*@", "")
end

local function http_url(v)
  if not plugin._origin(v) then
    return ("expected an http:// URL (plain HTTP only), got %q"):format(v)
  end
end

plugin.options = {
  connect_url = { type = "string", check = http_url },
  join_url = { type = "string", check = http_url },
  params = { type = "list", items = "string", default = {} },
  headers = { type = "list", items = "string", default = {} },
  timeout_ms = { type = "integer", min = 1, default = 3000,
                 check = function(v) if v > 60000 then return ("expected an integer from 1 to 60000, got %d"):format(v) end end },
  on_failure = { type = "string", one_of = { "refuse", "allow" }, default = "refuse" },
  auth_token = { type = "string", nonempty = true, secret = true },
}

plugin.UNAVAILABLE = "auth backend unavailable"

-- v, or nil when it is absent or JSON null.
local function present(v)
  if v == nil or v == herald.json.null then return nil end
  return v
end

-- A JSON object decoded (a table that is not a non-empty array).
local function is_object(v) return type(v) == "table" and v[1] == nil end

-- The body of the connect request for req (the authenticate hook's
-- argument): the allow-listed params and headers only.
function plugin._connect_body(req, options)
  local params, headers = {}, {}
  for _, name in ipairs(options.params) do
    params[name] = req.params and req.params[name]
  end
  for _, name in ipairs(options.headers) do
    local lower = name:lower()
    headers[lower] = req.headers and req.headers[lower]
  end
  return { remote_addr = req.remote_addr, params = params, headers = headers, token = req.token }
end

-- The body of the join request.
function plugin._join_body(socket, topic, payload)
  return { topic = topic, payload = payload, id = socket.id, assigns = socket.assigns,
           remote_addr = socket.remote_addr }
end

-- The request headers: JSON, and the bearer token when there is one.
function plugin._request_headers(options)
  local headers = { ["content-type"] = "application/json", accept = "application/json" }
  if options.auth_token then headers.authorization = "Bearer " .. options.auth_token end
  return headers
end

-- What the backend's answer is, from herald.http.request's results: the
-- decoded object when it is a 200 with a JSON object holding a boolean
-- `allow` (and, where given, a string or number `id` and object `assigns`
-- and `reply`); else nil and what was wrong, in words for the log.
function plugin._answer(res, err)
  if not res then return nil, tostring(err or "no answer") end
  if res.status ~= 200 then return nil, ("answered HTTP %s"):format(tostring(res.status)) end
  local body = herald.json.decode(res.body or "")
  if not is_object(body) then return nil, "answered with a body that is not a JSON object" end
  if type(body.allow) ~= "boolean" then return nil, 'answered without a boolean "allow"' end
  local id = present(body.id)
  if id ~= nil and type(id) ~= "string" and type(id) ~= "number" then
    return nil, 'answered with an "id" that is neither a string nor a number'
  end
  for _, k in ipairs({ "assigns", "reply" }) do
    if present(body[k]) ~= nil and not is_object(body[k]) then
      return nil, ('answered with a %q that is not a JSON object'):format(k)
    end
  end
  return body
end

-- The decision on an answer: true and the answer's object (allowed), or
-- false and the reason (refused); a third value, when the answer was a
-- failure, says what went wrong (for the log). A failure refuses with
-- "auth backend unavailable" when options.on_failure is "refuse", and
-- allows with an empty object when it is "allow".
function plugin._decide(res, err, options)
  local body, failure = plugin._answer(res, err)
  if not body then
    if options.on_failure == "allow" then return true, {}, failure end
    return false, plugin.UNAVAILABLE, failure
  end
  if not body.allow then
    local reason = present(body.reason)
    return false, type(reason) == "string" and reason ~= "" and reason or "unauthorized"
  end
  return true, body
end

-- authenticate's result for an allowed answer: the identity and assigns
-- it gave (either may be absent).
function plugin._identity(body)
  local id = present(body.id)
  return { id = id ~= nil and tostring(id) or nil, assigns = present(body.assigns) }
end

-- Merges the answer's assigns into the socket's (a JSON null removes a key).
function plugin._merge_assigns(assigns, extra)
  for k, v in pairs(present(extra) or {}) do
    if v == herald.json.null then assigns[k] = nil else assigns[k] = v end
  end
end

function plugin.setup(options)
  if not options.connect_url and not options.join_url then
    error("webhook_auth needs connect_url or join_url (or both)", 0)
  end
  local headers = plugin._request_headers(options)

  -- The same failure (of connects, or of joins) is logged at most once a
  -- second (a dead backend under load would log every connect), the next
  -- line saying how many went unlogged since. (At most 64 kinds are
  -- remembered: beyond, the memory starts afresh.)
  local seen, kinds = {}, 0
  local function warn(what, url, failure)
    local key, now = what .. " " .. failure, herald.monotonic_ms()
    local s = seen[key]
    if s and now - s.at < 1000 then
      s.unlogged = s.unlogged + 1
      return
    end
    local more = s and s.unlogged or 0
    herald.log("warn", ("webhook_auth: %s backend %s failed: %s (on_failure = %s)%s")
      :format(what, plugin._origin(url), failure, options.on_failure,
              more > 0 and (", and %d more since the last one logged"):format(more) or ""))
    if not s then
      if kinds >= 64 then seen, kinds = {}, 0 end
      kinds = kinds + 1
    end
    seen[key] = { at = now, unlogged = 0 }
  end

  -- POSTs body to url and decides on the answer, logging a failure.
  local function ask(what, url, body)
    local text, e = herald.json.encode(body)
    local res, err
    if text then
      res, err = herald.http.request { method = "POST", url = url, headers = headers, body = text,
                                       timeout_ms = options.timeout_ms }
    else
      err = "the request cannot be encoded as JSON: " .. tostring(e)
    end
    local allowed, detail, failure = plugin._decide(res, err, options)
    if failure then warn(what, url, failure) end
    return allowed, detail
  end

  local M = {}
  if options.connect_url then
    function M.authenticate(req)
      local allowed, detail = ask("connect", options.connect_url, plugin._connect_body(req, options))
      if not allowed then return false, detail end
      return plugin._identity(detail)
    end
  end
  if options.join_url then
    function M.join(socket, topic, payload)
      local allowed, detail = ask("join", options.join_url, plugin._join_body(socket, topic, payload))
      if not allowed then return false, detail end
      if present(detail.assigns) then plugin._merge_assigns(socket.assigns, detail.assigns) end
      local reply = present(detail.reply)
      if reply then return true, { reply = reply } end
      return true
    end
  end
  return M
end

return plugin
