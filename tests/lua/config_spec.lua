-- Specs for lua/herald/config.lua: defaults, checks and error messages.
package.path = "lua/?.lua;" .. package.path
local config = require("herald.config")

local function norm(t) return config.normalize(t, "test.lua") end

describe("herald.config.normalize", function()
  it("fills every default for an empty config", function()
    local c = assert(norm({}))
    assert.are.equal("0.0.0.0", c.listen.host)
    assert.are.equal(4000, c.listen.port)
    assert.are.equal(false, c.api.token)
    assert.are.same({ "/push_socket", "/socket" }, c.mounts)
    assert.are.equal(100000, c.limits.max_connections)
    assert.are.equal(65536, c.limits.max_message_bytes)
    assert.are.equal(1048576, c.limits.send_queue_bytes)
    assert.are.equal(16384, c.limits.max_header_bytes)
    assert.are.equal(1048576, c.limits.max_body_bytes)
    assert.are.equal(100, c.limits.max_topics_per_socket)
    assert.are.equal(45000, c.timeouts.ws_idle_ms)
    assert.are.equal(60000, c.timeouts.http_idle_ms)
    assert.are.equal("info", c.log.level)
  end)

  it("keeps given values and defaults the rest of a section", function()
    local c = assert(norm({ listen = { port = 0 }, limits = { max_body_bytes = 10 } }))
    assert.are.equal(0, c.listen.port)
    assert.are.equal("0.0.0.0", c.listen.host)
    assert.are.equal(10, c.limits.max_body_bytes)
    assert.are.equal(16384, c.limits.max_header_bytes)
  end)

  it("names the setting and the expected type on a wrong type", function()
    local c, err = norm({ listen = { port = "x" } })
    assert.is_nil(c)
    assert.matches("test.lua: listen.port: expected an integer from 0 to 65535", err, 1, true)
  end)

  it("rejects out-of-range and fractional numbers", function()
    assert.is_nil(norm({ listen = { port = 70000 } }))
    assert.is_nil(norm({ limits = { max_connections = 1.5 } }))
    assert.is_nil(norm({ limits = { max_connections = 0 } }))
  end)

  it("rejects unknown settings at both levels", function()
    local _, e1 = norm({ limitz = {} })
    assert.matches("unknown setting 'limitz'", e1, 1, true)
    local _, e2 = norm({ limits = { max_conections = 5 } })
    assert.matches("unknown setting 'limits.max_conections'", e2, 1, true)
  end)

  it("allows helper functions and reserved sections", function()
    assert.truthy(norm({ helper = function() end, scripts = { "policy.lua" }, cluster = {} }))
    local _, err = norm({ cluster = 5 })
    assert.matches("cluster: expected a table", err, 1, true)
  end)

  it("normalizes mounts and refuses bad ones", function()
    local c = assert(norm({ mounts = { "/ws/", "/push_socket" } }))
    assert.are.same({ "/ws", "/push_socket" }, c.mounts)
    assert.is_nil(norm({ mounts = {} }))
    assert.is_nil(norm({ mounts = { "socket" } }))
    assert.is_nil(norm({ mounts = { "/socket/websocket" } }))
    assert.is_nil(norm({ mounts = "/socket" }))
  end)

  it("takes a token string, or none", function()
    assert.are.equal("s3cret", assert(norm({ api = { token = "s3cret" } })).api.token)
    assert.are.equal(false, assert(norm({ api = { token = nil } })).api.token)
    assert.is_nil(norm({ api = { token = 42 } }))
  end)

  it("checks the log level", function()
    assert.are.equal("debug", assert(norm({ log = { level = "debug" } })).log.level)
    local _, err = norm({ log = { level = "loud" } })
    assert.matches("log.level", err, 1, true)
  end)

  it("lets HERALD_PORT override listen.port and checks it", function()
    config.getenv = function(k) if k == "HERALD_PORT" then return "4321" end end
    assert.are.equal(4321, assert(norm({ listen = { port = 1 } })).listen.port)
    config.getenv = function(k) if k == "HERALD_PORT" then return "nope" end end
    local _, err = norm({})
    assert.matches("HERALD_PORT", err, 1, true)
    config.getenv = nil
  end)
end)
