-- Specs for plugins/webhook_auth.lua: its decisions (pure functions on the
-- plugin table) against the real herald.json, and its hooks with a stubbed
-- herald.http.request that records each request and answers from a table.
package.path = "tests/lua/?.lua;" .. package.path
local helper = require("helper")
local herald = helper.herald
local json = herald.json

-- The plugin table (options, setup, the pure functions), loaded in a
-- sandbox as the server loads it.
local function declaration()
  local chunk = assert(loadfile("plugins/webhook_auth.lua"))
  setfenv(chunk, helper.sandbox(herald))
  return chunk()
end
local plugin = declaration()

local function options(given)
  local checked, errs = helper.plugin_options("webhook_auth", given)
  return checked, errs and table.concat(errs, "\n")
end
local BASE = { connect_url = "http://127.0.0.1:9/connect", join_url = "http://127.0.0.1:9/join" }
local function with(extra)
  local o = {}
  for k, v in pairs(BASE) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function ok(status, body) return { status = status, headers = {}, body = body } end
local function answer(t) return ok(200, assert(json.encode(t))) end

-- The plugin's hooks over a stubbed herald.http.request: `answers` is a
-- function(request) -> res, err; calls[i] is each request with its body
-- decoded, logs[i] each herald.log line.
local function hooks(given, answers)
  local calls, logs = {}, {}
  local stub = {
    http = { request = function(r)
      local copy = {}
      for k, v in pairs(r) do copy[k] = v end
      copy.json = json.decode(r.body)
      calls[#calls + 1] = copy
      return answers(copy)
    end },
    log = function(level, ...) logs[#logs + 1] = { level = level, text = table.concat({ ... }, " ") } end,
  }
  return helper.plugin("webhook_auth", given, stub), calls, logs
end

local function req(params, headers, token)
  return { params = params or {}, headers = headers or {}, token = token, remote_addr = "10.0.0.7",
           path = "/socket/websocket" }
end
local function socket(id, assigns) return { id = id, conn_id = 3, assigns = assigns or {}, remote_addr = "10.0.0.8" } end

describe("webhook_auth decisions", function()
  local refuse, allow = { on_failure = "refuse" }, { on_failure = "allow" }

  it("allows on 200 {allow: true}, keeping the answer's id, assigns and reply", function()
    local allowed, body = plugin._decide(answer({ allow = true, id = "user-1", assigns = { role = "admin" },
                                                  reply = { hi = 1 } }), nil, refuse)
    assert.is_true(allowed)
    assert.are.same({ id = "user-1", assigns = { role = "admin" } }, plugin._identity(body))
    assert.are.same({ hi = 1 }, body.reply)
    -- id and assigns are optional; a number id becomes a string; null is absent
    assert.are.same({}, plugin._identity(select(2, plugin._decide(answer({ allow = true }), nil, refuse))))
    assert.are.same({ id = "42" }, plugin._identity(select(2, plugin._decide(ok(200, '{"allow":true,"id":42}'), nil, refuse))))
    assert.are.same({}, plugin._identity(select(2, plugin._decide(ok(200, '{"allow":true,"id":null,"assigns":null}'), nil, refuse))))
  end)

  it("refuses on {allow: false} with the backend's reason, else unauthorized", function()
    for _, opt in ipairs({ refuse, allow }) do
      local allowed, reason, failure = plugin._decide(answer({ allow = false, reason = "banned" }), nil, opt)
      assert.is_false(allowed)
      assert.are.equal("banned", reason)
      assert.is_nil(failure)
      for _, text in ipairs({ '{"allow":false}', '{"allow":false,"reason":""}', '{"allow":false,"reason":7}',
                              '{"allow":false,"reason":null}' }) do
        allowed, reason = plugin._decide(ok(200, text), nil, opt)
        assert.is_false(allowed, text)
        assert.are.equal("unauthorized", reason, text)
      end
    end
  end)

  -- Each failure: the answer (res, err) and the words the log gets.
  local failures = {
    { "timeout", nil, "timeout", "timeout" },
    { "connection refused", nil, "connection refused", "connection refused" },
    { "too large", nil, "response too large", "response too large" },
    { "malformed", nil, "malformed response: bad status line", "malformed response: bad status line" },
    { "5xx", ok(503, '{"allow":true}'), nil, "answered HTTP 503" },
    { "a redirect", ok(302, ""), nil, "answered HTTP 302" },
    { "200 not JSON", ok(200, "<html>ok</html>"), nil, "answered with a body that is not a JSON object" },
    { "200 empty", ok(200, ""), nil, "answered with a body that is not a JSON object" },
    { "200 a JSON array", ok(200, '[true]'), nil, "answered with a body that is not a JSON object" },
    { "200 a JSON string", ok(200, '"allow"'), nil, "answered with a body that is not a JSON object" },
    { "allow not boolean", ok(200, '{"allow":"yes"}'), nil, 'answered without a boolean "allow"' },
    { "allow absent", ok(200, '{"id":"u"}'), nil, 'answered without a boolean "allow"' },
    { "allow 1", ok(200, '{"allow":1}'), nil, 'answered without a boolean "allow"' },
    { "id a table", ok(200, '{"allow":true,"id":{"a":1}}'), nil, 'answered with an "id" that is neither a string nor a number' },
    { "assigns a list", ok(200, '{"allow":true,"assigns":[1]}'), nil, 'answered with a "assigns" that is not a JSON object' },
    { "reply a string", ok(200, '{"allow":true,"reply":"x"}'), nil, 'answered with a "reply" that is not a JSON object' },
  }
  for _, f in ipairs(failures) do
    local name, res, err, said = f[1], f[2], f[3], f[4]
    it(("a failure (%s): on_failure refuse refuses, allow allows with nothing"):format(name), function()
      local allowed, reason, failure = plugin._decide(res, err, refuse)
      assert.is_false(allowed)
      assert.are.equal("auth backend unavailable", reason)
      assert.are.equal(said, failure)
      local allowed2, body, failure2 = plugin._decide(res, err, allow)
      assert.is_true(allowed2)
      assert.are.same({}, body)
      assert.are.same({}, plugin._identity(body))
      assert.are.equal(said, failure2)
    end)
  end

  it("forwards only the listed params and headers, header names in any case", function()
    local o = assert(options(with({ params = { "user", "room", "absent" }, headers = { "X-Tenant", "user-agent" } })))
    local r = req({ user = "ann", room = "1", secret = "s", vsn = "2.0.0" },
                  { ["x-tenant"] = "acme", ["user-agent"] = "ua", cookie = "c=1", authorization = "Bearer x" })
    assert.are.same({ remote_addr = "10.0.0.7", params = { user = "ann", room = "1" },
                      headers = { ["x-tenant"] = "acme", ["user-agent"] = "ua" } }, plugin._connect_body(r, o))
  end)

  it("forwards nothing by default; the token only when present", function()
    local o = assert(options(BASE))
    local body = plugin._connect_body(req({ user = "ann" }, { cookie = "c" }), o)
    assert.are.same({ remote_addr = "10.0.0.7", params = {}, headers = {} }, body)
    assert.are.equal('{}', json.encode(body.params)) -- an object, not an array
    assert.are.equal("tok", plugin._connect_body(req({}, {}, "tok"), o).token)
  end)

  it("builds the join body from the socket", function()
    assert.are.same({ topic = "room:1", payload = { a = 1 }, id = "u", assigns = { role = "r" }, remote_addr = "10.0.0.8" },
      plugin._join_body(socket("u", { role = "r" }), "room:1", { a = 1 }))
  end)

  it("sends JSON, with the bearer token only when auth_token is set", function()
    assert.are.same({ ["content-type"] = "application/json", accept = "application/json" },
      plugin._request_headers(assert(options(BASE))))
    assert.are.equal("Bearer s3", plugin._request_headers(assert(options(with({ auth_token = "s3" })))).authorization)
  end)

  it("logs only a URL's origin", function()
    assert.are.equal("http://127.0.0.1:9", plugin._origin("http://127.0.0.1:9/a/b?key=secret#x"))
    assert.are.equal("http://backend", plugin._origin("http://user:pw@backend/x"))
    assert.is_nil(plugin._origin("https://backend/x"))
  end)
end)

describe("webhook_auth hooks", function()
  it("authenticate posts the connect body and allows with the backend's identity", function()
    local p, calls = hooks(with({ params = { "user" }, auth_token = "s3" }), function()
      return answer({ allow = true, id = "user-1", assigns = { role = "admin" } })
    end)
    assert.are.same({ id = "user-1", assigns = { role = "admin" } }, p.authenticate(req({ user = "ann" }, {}, "t0k")))
    assert.are.equal(1, #calls)
    local c = calls[1]
    assert.are.equal("POST", c.method)
    assert.are.equal("http://127.0.0.1:9/connect", c.url)
    assert.are.equal(3000, c.timeout_ms)
    assert.are.same({ ["content-type"] = "application/json", accept = "application/json", authorization = "Bearer s3" },
      c.headers)
    assert.are.same({ remote_addr = "10.0.0.7", params = { user = "ann" }, headers = {}, token = "t0k" }, c.json)
  end)

  it("authenticate refuses with the backend's reason", function()
    local p = hooks(BASE, function() return answer({ allow = false, reason = "banned" }) end)
    local id, why = p.authenticate(req())
    assert.is_false(id)
    assert.are.equal("banned", why)
  end)

  it("a failure is logged with the URL's origin and the error, never the token or the body", function()
    local p, _, logs = hooks(with({ auth_token = "sekrit-token", connect_url = "http://127.0.0.1:9/c?key=qs-secret" }),
      function() return nil, "connection refused" end)
    local id, why = p.authenticate(req({}, {}, "client-token"))
    assert.is_false(id)
    assert.are.equal("auth backend unavailable", why)
    assert.are.equal(1, #logs)
    assert.are.equal("warn", logs[1].level)
    assert.are.equal("webhook_auth: connect backend http://127.0.0.1:9 failed: connection refused (on_failure = refuse)",
      logs[1].text)
    for _, secret in ipairs({ "sekrit-token", "qs-secret", "client-token", "10.0.0.7" }) do
      assert.is_nil(logs[1].text:find(secret, 1, true), secret)
    end
  end)

  it("logs the same failure at most once a second, counting the ones it did not log", function()
    local clock, logs, http_err = 0, {}, "connection refused"
    local p = helper.plugin("webhook_auth", with({}), {
      http = { request = function() return nil, http_err end },
      log = function(level, ...) logs[#logs + 1] = table.concat({ ... }, " ") end,
      monotonic_ms = function() return clock end,
    })
    for _, at in ipairs({ 5000, 5010, 5900, 6500 }) do
      clock = at
      p.authenticate(req())
    end
    p.join(socket("7", {}), "t", {}) -- (joins are counted apart)
    assert.are.equal(3, #logs)
    -- Another failure is logged at once.
    http_err = "timeout"
    p.authenticate(req())
    assert.are.equal(4, #logs)
    assert.truthy(logs[4]:find("failed: timeout", 1, true))
    assert.is_nil(logs[1]:find("more failure", 1, true))
    assert.truthy(logs[2]:find("failed: connection refused (on_failure = refuse), and 2 more since the last one logged", 1, true))
    assert.truthy(logs[3]:find("join backend", 1, true))
  end)

  it("on_failure allow lets a connect and a join in, unidentified and unchanged", function()
    local p, _, logs = hooks(with({ on_failure = "allow" }), function() return ok(500, "oops") end)
    assert.are.same({}, p.authenticate(req()))
    local s = socket("7", { role = "r" })
    assert.are.same({ true }, { p.join(s, "t", {}) })
    assert.are.same({ role = "r" }, s.assigns)
    assert.are.equal(2, #logs)
    assert.are.equal("webhook_auth: join backend http://127.0.0.1:9 failed: answered HTTP 500 (on_failure = allow)",
      logs[2].text)
  end)

  it("join posts the join body, merges the answer's assigns and returns its reply", function()
    local p, calls = hooks(with({ timeout_ms = 250 }), function()
      return answer({ allow = true, assigns = { seat = 4, role = json.null }, reply = { welcome = "ann" } })
    end)
    local s = socket("ann", { role = "guest", org = "acme" })
    local allowed, extra = p.join(s, "room:1", { device = "web" })
    assert.is_true(allowed)
    assert.are.same({ reply = { welcome = "ann" } }, extra)
    assert.are.same({ org = "acme", seat = 4 }, s.assigns) -- null removed role
    assert.are.equal("http://127.0.0.1:9/join", calls[1].url)
    assert.are.equal(250, calls[1].timeout_ms)
    assert.are.same({ topic = "room:1", payload = { device = "web" }, id = "ann",
                      assigns = { role = "guest", org = "acme" }, remote_addr = "10.0.0.8" }, calls[1].json)
  end)

  it("join without assigns or reply allows plainly; a refusal keeps the assigns", function()
    local verdict = { allow = true }
    local p = hooks(BASE, function() return answer(verdict) end)
    local s = socket("u", { a = 1 })
    assert.are.same({ true }, { p.join(s, "t", {}) })
    verdict = { allow = false, reason = "full", assigns = { a = 2 } }
    assert.are.same({ false, "full" }, { p.join(s, "t", {}) })
    assert.are.same({ a = 1 }, s.assigns)
  end)

  it("a request that cannot be encoded is a failure, not a crash", function()
    local p, calls, logs = hooks(with({ params = { "bad" } }), function() return answer({ allow = true }) end)
    local id, why = p.authenticate(req({ bad = "\255" }))
    assert.is_false(id)
    assert.are.equal("auth backend unavailable", why)
    assert.are.equal(0, #calls)
    assert.matches("the request cannot be encoded as JSON", logs[1].text, 1, true)
  end)

  it("defines only the hooks its URLs call for", function()
    local c = hooks({ connect_url = BASE.connect_url }, function() end)
    assert.is_function(c.authenticate)
    assert.is_nil(c.join)
    local j = hooks({ join_url = BASE.join_url }, function() end)
    assert.is_nil(j.authenticate)
    assert.is_function(j.join)
  end)
end)

describe("webhook_auth options", function()
  it("fills in the defaults", function()
    assert.are.same({ connect_url = BASE.connect_url, params = {}, headers = {}, timeout_ms = 3000, on_failure = "refuse" },
      assert(options({ connect_url = BASE.connect_url })))
  end)

  it("setup refuses a config with neither URL", function()
    assert.has_error(function() helper.plugin("webhook_auth", {}) end,
      "webhook_auth needs connect_url or join_url (or both)")
    assert.has_error(function() helper.plugin("webhook_auth", { params = { "user" } }) end,
      "webhook_auth needs connect_url or join_url (or both)")
  end)

  it("refuses bad options, naming the plugin and the option", function()
    local function rejects(given, msg)
      local checked, errs = options(given)
      assert.is_nil(checked)
      assert.are.equal(msg, errs)
    end
    rejects(with({ connect_url = "https://x/c" }),
      'plugins.webhook_auth.connect_url: expected an http:// URL (plain HTTP only), got "https://x/c"')
    rejects(with({ join_url = "127.0.0.1:9/join" }),
      'plugins.webhook_auth.join_url: expected an http:// URL (plain HTTP only), got "127.0.0.1:9/join"')
    rejects(with({ join_url = 9 }), "plugins.webhook_auth.join_url: expected a string, got 9")
    rejects(with({ timeout_ms = 0 }), "plugins.webhook_auth.timeout_ms: expected an integer >= 1, got 0")
    rejects(with({ timeout_ms = 60001 }), "plugins.webhook_auth.timeout_ms: expected an integer from 1 to 60000, got 60001")
    rejects(with({ timeout_ms = 1.5 }), "plugins.webhook_auth.timeout_ms: expected an integer >= 1, got 1.5")
    rejects(with({ on_failure = "deny" }), 'plugins.webhook_auth.on_failure: expected one of "refuse", "allow", got "deny"')
    rejects(with({ params = "user" }), 'plugins.webhook_auth.params: expected a list, each item a string, got "user"')
    rejects(with({ headers = { "x-a", 1 } }), "plugins.webhook_auth.headers: item 2: expected a string, got 1")
    rejects(with({ auth_token = "" }), 'plugins.webhook_auth.auth_token: expected a non-empty string, got ""')
    rejects(with({ auth_token = 12345 }), "plugins.webhook_auth.auth_token: expected a non-empty string, got a number")
    rejects(with({ url = "http://x" }), 'plugins.webhook_auth: unknown option "url" (webhook_auth takes auth_token, '
      .. "connect_url, headers, join_url, on_failure, params, timeout_ms)")
  end)

  it("accepts the edges of timeout_ms", function()
    assert.are.equal(1, assert(options(with({ timeout_ms = 1 }))).timeout_ms)
    assert.are.equal(60000, assert(options(with({ timeout_ms = 60000 }))).timeout_ms)
  end)
end)
