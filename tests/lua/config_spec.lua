-- Specs for lua/herald/config.lua: defaults, checks and error messages.
package.path = "lua/?.lua;tests/lua/?.lua;" .. package.path
local config = require("herald.config")

local function norm(t) return config.normalize(t, "test.lua") end

describe("herald.config.normalize", function()
  it("fills every default for an empty config", function()
    local c = assert(norm({}))
    assert.are.equal("0.0.0.0", c.listen.host)
    assert.are.equal(4000, c.listen.port)
    assert.are.equal(false, c.api.token)
    assert.are.same({ { path = "/push_socket", websocket = true, longpoll = false },
                      { path = "/socket", websocket = true, longpoll = true } }, c.mounts)
    assert.are.same({ poll_ms = 10000, window_ms = 10000, max_batch = 100 }, c.longpoll)
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

  it("allows helper functions", function()
    assert.truthy(norm({ helper = function() end, scripts = { "policy.lua" } }))
  end)

  it("checks the client message rate: non-negative integers, a burst of at least 1 when on", function()
    local l = assert(norm({})).limits
    assert.are.equal(100, l.client_messages_per_s)
    assert.are.equal(200, l.client_messages_burst)
    l = assert(norm({ limits = { client_messages_per_s = 0, client_messages_burst = 0 } })).limits
    assert.are.equal(0, l.client_messages_per_s)
    assert.truthy(norm({ limits = { client_messages_per_s = 1, client_messages_burst = 1 } }))
    local _, err = norm({ limits = { client_messages_per_s = 5, client_messages_burst = 0 } })
    assert.are.equal("test.lua: limits.client_messages_burst: expected at least 1 while "
                     .. "limits.client_messages_per_s is set, got 0", err)
    _, err = norm({ limits = { client_messages_per_s = -1 } })
    assert.matches("limits.client_messages_per_s: expected an integer from 0 to 1000000", err, 1, true)
    _, err = norm({ limits = { client_messages_burst = 2.5 } })
    assert.matches("limits.client_messages_burst: expected an integer from 0 to 1000000", err, 1, true)
  end)

  it("defaults listen.reuseport to false and checks it", function()
    assert.are.equal(false, assert(norm({})).listen.reuseport)
    assert.are.equal(true, assert(norm({ listen = { reuseport = true } })).listen.reuseport)
    local _, err = norm({ listen = { reuseport = "yes" } })
    assert.matches('test.lua: listen.reuseport: expected true or false, got "yes"', err, 1, true)
  end)

  describe("cluster", function()
    after_each(function() config.redis_url = nil end)

    it("is a single node when absent, with the other defaults", function()
      local c = assert(norm({})).cluster
      assert.are.same({ redis = false, node_timeout_ms = 30000, heartbeat_ms = 1500, required = false,
                        queue_max = 10000, node = false }, c)
    end)

    it("takes one URL or a list of shards, always as a list", function()
      local c = assert(norm({ cluster = { redis = "redis://127.0.0.1:6379" } })).cluster
      assert.are.same({ "redis://127.0.0.1:6379" }, c.redis)
      assert.are.equal(30000, c.node_timeout_ms)
      c = assert(norm({ cluster = { redis = { "redis://a", "redis://b" }, node_timeout_ms = 1000,
                                    heartbeat_ms = 499, required = true, queue_max = 1 } })).cluster
      assert.are.same({ redis = { "redis://a", "redis://b" }, node_timeout_ms = 1000, heartbeat_ms = 499,
                        required = true, queue_max = 1, node = false }, c)
    end)

    it("takes a stable node name", function()
      local c = assert(norm({ cluster = { redis = "redis://a", node = "web-1.eu_2" } })).cluster
      assert.are.equal("web-1.eu_2", c.node)
      for _, bad in ipairs({ "", "a b", "a~b", string.rep("x", 49), 5 }) do
        local _, err = norm({ cluster = { redis = "redis://a", node = bad } })
        assert.matches("cluster.node: expected a name of 1 to 48 letters", err, 1, true)
      end
    end)

    it("needs redis when the section is given", function()
      local _, err = norm({ cluster = {} })
      assert.matches("test.lua: cluster.redis: expected a redis:// URL or a list of them", err, 1, true)
      _, err = norm({ cluster = { required = true } })
      assert.matches("got nil", err, 1, true)
      _, err = norm({ cluster = 5 })
      assert.matches("test.lua: cluster: expected a table", err, 1, true)
    end)

    it("checks the shape of redis", function()
      local _, err = norm({ cluster = { redis = {} } })
      assert.matches("cluster.redis: expected a non-empty list", err, 1, true)
      _, err = norm({ cluster = { redis = 6379 } })
      assert.matches("cluster.redis: expected a redis:// URL or a non-empty list of them (at most 16), got 6379",
                     err, 1, true)
      _, err = norm({ cluster = { redis = { "redis://a", true } } })
      assert.matches("cluster.redis: expected a list whose item 2 is a string", err, 1, true)
      local many = {}
      for i = 1, 17 do many[i] = "redis://h:" .. i end
      _, err = norm({ cluster = { redis = many } })
      assert.matches("at most 16 items", err, 1, true)
      many[17] = nil
      assert.are.equal(16, #assert(norm({ cluster = { redis = many } })).cluster.redis)
      _, err = norm({ cluster = { redis = "redis://:hunter2@h\0" } }) -- never shown: a password
      assert.matches("cluster.redis: expected a redis:// URL or a non-empty list of them (at most 16), "
                     .. "got a string with a NUL byte", err, 1, true)
      assert.is_nil(err:find("hunter2", 1, true))
      _, err = norm({ cluster = { redis = "redis://h", shards = 2 } })
      assert.matches("unknown setting 'cluster.shards'", err, 1, true)
    end)

    it("checks the ranges", function()
      local cases = {
        { "node_timeout_ms", 999, "an integer from 1000 to 3600000" },
        { "node_timeout_ms", 3600001, "an integer from 1000 to 3600000" },
        { "heartbeat_ms", 99, "an integer from 100 to 600000" },
        { "heartbeat_ms", 600001, "an integer from 100 to 600000" },
        { "queue_max", 0, "an integer from 1 to 10000000" },
        { "queue_max", 10000001, "an integer from 1 to 10000000" },
        { "queue_max", 1.5, "an integer from 1 to 10000000" },
        { "required", 1, "true or false" },
      }
      for _, case in ipairs(cases) do
        local key, v, want = case[1], case[2], case[3]
        local cl = { redis = "redis://h" }
        if key == "heartbeat_ms" then cl.node_timeout_ms = 3600000 end -- so the relation holds
        cl[key] = v
        local _, err = norm({ cluster = cl })
        assert.matches(("test.lua: cluster.%s: expected %s, got %s"):format(key, want, tostring(v)), err, 1, true)
      end
    end)

    it("keeps heartbeat_ms under half of node_timeout_ms", function()
      assert.truthy(norm({ cluster = { redis = "redis://h", node_timeout_ms = 1000, heartbeat_ms = 499 } }))
      local _, err = norm({ cluster = { redis = "redis://h", node_timeout_ms = 1000, heartbeat_ms = 500 } })
      assert.matches("test.lua: cluster.heartbeat_ms: expected less than half of cluster.node_timeout_ms (1000), got 500",
                     err, 1, true)
      _, err = norm({ cluster = { redis = "redis://h", node_timeout_ms = 3000 } }) -- default heartbeat 1500
      assert.matches("cluster.heartbeat_ms: expected less than half", err, 1, true)
    end)

    it("parses each URL with redis_url and names the item", function()
      -- core/config.c sets redis_url to hd_redis_url_parse; a stand-in here.
      local seen = {}
      config.redis_url = function(url)
        seen[#seen + 1] = url
        if url:find(":70000", 1, true) then return nil, "port out of range (1-65535)" end
        return true
      end
      assert.truthy(norm({ cluster = { redis = { "redis://a", "redis://b" } } }))
      assert.are.same({ "redis://a", "redis://b" }, seen)
      local _, err = norm({ cluster = { redis = { "redis://a", "redis://:pw@b:70000" } } })
      assert.are.equal("test.lua: cluster.redis[2]: port out of range (1-65535)", err)
      _, err = norm({ cluster = { redis = "redis://:pw@b:70000" } })
      assert.are.equal("test.lua: cluster.redis: port out of range (1-65535)", err)
    end)
  end)

  it("normalizes mounts and refuses bad ones", function()
    local c = assert(norm({ mounts = { "/ws/", "/push_socket" } }))
    assert.are.same({ { path = "/ws", websocket = true, longpoll = true },
                      { path = "/push_socket", websocket = true, longpoll = false } }, c.mounts)
    assert.is_nil(norm({ mounts = {} }))
    assert.is_nil(norm({ mounts = { "socket" } }))
    assert.is_nil(norm({ mounts = { "/socket/websocket" } }))
    assert.is_nil(norm({ mounts = { "/socket/longpoll" } }))
    assert.is_nil(norm({ mounts = "/socket" }))
  end)

  it("takes per-mount transports", function()
    local c = assert(norm({ mounts = { { "/live", websocket = false }, { "/push_socket", longpoll = true },
                                       { "/ws", longpoll = false } } }))
    assert.are.same({ { path = "/live", websocket = false, longpoll = true },
                      { path = "/push_socket", websocket = true, longpoll = true },
                      { path = "/ws", websocket = true, longpoll = false } }, c.mounts)
    local _, err = norm({ mounts = { { "/x", websocket = false, longpoll = false } } })
    assert.matches("mounts: expected a list whose item 1 is a mount serving websocket, longpoll or both", err, 1, true)
    _, err = norm({ mounts = { { "/x", sse = true } } })
    assert.matches("found sse", err, 1, true)
    _, err = norm({ mounts = { { "/x", longpoll = "yes" } } })
    assert.matches("true or false", err, 1, true)
    _, err = norm({ mounts = { { path = "/x" } } })
    assert.matches("first item is", err, 1, true)
    _, err = norm({ longpoll = { poll_ms = 50 } })
    assert.matches("longpoll.poll_ms: expected an integer from 100 to 300000, got 50", err, 1, true)
  end)

  it("takes a token string, or none", function()
    assert.are.equal("s3cret", assert(norm({ api = { token = "s3cret" } })).api.token)
    assert.are.equal(false, assert(norm({ api = { token = nil } })).api.token)
    assert.is_nil(norm({ api = { token = 42 } }))
  end)

  it("checks topic rules", function()
    local c = assert(norm({ topics = { { match = "public:*", tracked = false, throttle_ms = 500 } } }))
    assert.are.equal("public:*", c.topics[1].match)
    assert.are.equal(false, c.topics[1].tracked)
    assert.are.equal(500, c.topics[1].throttle_ms)
    assert.are.same({}, assert(norm({})).topics)
    local _, e1 = norm({ topics = { { tracked = false } } })
    assert.are.equal("test.lua: topics[1]: match: expected a pattern (a non-empty string; * matches any run of characters), got nil", e1)
    local _, e2 = norm({ topics = { { match = "x", coalesce = "oldest" } } })
    assert.are.equal('test.lua: topics[1]: coalesce: expected "none" or "latest", got "oldest"', e2)
    local _, e3 = norm({ topics = { { match = "x", trackd = true } } })
    assert.are.equal('test.lua: topics[1]: unknown field "trackd" (the fields are coalesce, debounce_ms, history_size, '
      .. "history_ttl_ms, max_queue_bytes, max_wait_ms, on_overflow, presence, recover_max, throttle_ms, tracked)", e3)
    local h = assert(norm({ topics = { { match = "h:*", history_size = 100, history_ttl_ms = 60000, recover_max = 50 } } }))
    assert.are.equal(100, h.topics[1].history_size)
    assert.are.equal(60000, h.topics[1].history_ttl_ms)
    assert.are.equal(50, h.topics[1].recover_max)
    local _, e4 = norm({ topics = { { match = "x", history_size = 100001 } } })
    assert.are.equal("test.lua: topics[1]: history_size: expected an integer from 0 to 100000, got 100001", e4)
    local _, e5 = norm({ topics = { { match = "x", history_ttl_ms = -1 } } })
    assert.are.equal("test.lua: topics[1]: history_ttl_ms: expected an integer from 1 to 4294967295, got -1", e5)
    local _, e6 = norm({ topics = { { match = "x", history_ttl_ms = 0 } } })
    assert.are.equal("test.lua: topics[1]: history_ttl_ms: expected an integer from 1 to 4294967295, got 0", e6)
    assert.is_nil(norm({ topics = { x = {} } }))
    assert.is_nil(norm({ topics = "x" }))
  end)

  it("reports every bad field of every rule, one line each", function()
    local _, err, lines = norm({ topics = { { match = "a", tracked = 1, throttle_ms = 1.5 }, 7,
                                            { match = "", recover_max = 2^32 } } })
    assert.are.same({
      "test.lua: topics[1]: throttle_ms: expected an integer from 0 to 4294967295, got 1.5",
      "test.lua: topics[1]: tracked: expected true or false, got 1",
      'test.lua: topics[2]: expected a rule such as { match = "public:*", tracked = false }, got 7',
      "test.lua: topics[3]: match: expected a pattern (a non-empty string; * matches any run of characters), got \"\"",
      "test.lua: topics[3]: recover_max: expected an integer from 0 to 4294967295, got 4294967296",
    }, lines)
    assert.are.equal(table.concat(lines, "\n"), err)
  end)

  -- The topic hook's results go through the same function (core/hooks.c),
  -- which puts "topic hook (<file>): " before each line.
  it("checks a topic policy with topic_policy, as the topic hook's result is checked", function()
    assert.are.same({ tracked = false, history_size = 5 }, config.topic_policy({ tracked = false, history_size = 5 }))
    assert.are.same({}, config.topic_policy({}))
    local _, lines = config.topic_policy({ presence = "yes", on_overflow = "drop", [1] = true, match = "x" })
    assert.are.same({
      'on_overflow: expected "close" or "drop_oldest", got "drop"',
      'presence: expected true or false, got "yes"',
      'unknown field "match" (the fields are coalesce, debounce_ms, history_size, history_ttl_ms, max_queue_bytes, '
        .. "max_wait_ms, on_overflow, presence, recover_max, throttle_ms, tracked)",
      "unknown field 1 (the fields are coalesce, debounce_ms, history_size, history_ttl_ms, max_queue_bytes, "
        .. "max_wait_ms, on_overflow, presence, recover_max, throttle_ms, tracked)",
    }, lines)
    -- Read raw: no metamethod of the table, its keys or its values runs.
    local evil = setmetatable({}, { __index = function() error("boom") end, __tostring = function() error("boom") end })
    local t = setmetatable({ [evil] = true, tracked = evil }, getmetatable(evil))
    _, lines = config.topic_policy(t)
    assert.are.equal("tracked: expected true or false, got an empty table", lines[1])
    assert.matches('^unknown field an empty table %(', lines[2])
  end)

  it("checks the log level", function()
    assert.are.equal("debug", assert(norm({ log = { level = "debug" } })).log.level)
    local _, err = norm({ log = { level = "loud" } })
    assert.matches("log.level", err, 1, true)
  end)

  it("checks the log format", function()
    assert.are.equal("text", assert(norm({})).log.format)
    assert.are.equal("json", assert(norm({ log = { format = "json" } })).log.format)
    local _, err = norm({ log = { format = "xml" } })
    assert.matches('log.format: expected one of "text", "json", got "xml"', err, 1, true)
  end)

  it("never shows api.token's value in an error", function()
    for _, case in ipairs({ { "hunter2\0x", "a string with a NUL byte" }, { 271828, "a number" },
                            { { "hunter2" }, "a table" }, { true, "a boolean" } }) do
      local _, err = norm({ api = { token = case[1] } })
      assert.are.equal("test.lua: api.token: expected a string without NUL bytes, or nil, got " .. case[2], err)
    end
  end)

  describe("reports every error it finds", function()
    it("one line each, naming the file and the setting, in a stable order", function()
      local c, err, lines = norm({ listen = { port = "x" }, limits = { max_conections = 5 }, log = { level = "loud" } })
      assert.is_nil(c)
      assert.are.same({
        'test.lua: listen.port: expected an integer from 0 to 65535, got "x"',
        "test.lua: unknown setting 'limits.max_conections'",
        'test.lua: log.level: expected one of "debug", "info", "warn", "error", got "loud"',
      }, lines)
      assert.are.equal(table.concat(lines, "\n"), err)
    end)

    it("across sections, unknown settings and relations", function()
      local _, _, lines = norm({ limitz = {}, mounts = {}, api = 5, listen = { hots = "x", port = -1 },
                                 cluster = { node_timeout_ms = 1000, heartbeat_ms = 500 } })
      assert.are.same({
        "test.lua: unknown setting 'limitz'",
        "test.lua: unknown setting 'listen.hots'",
        "test.lua: listen.port: expected an integer from 0 to 65535, got -1",
        "test.lua: api: expected a table, got number",
        "test.lua: mounts: expected a non-empty list, got an empty table",
        "test.lua: cluster.redis: expected a redis:// URL or a list of them (a cluster needs Redis), got nil",
        "test.lua: cluster.heartbeat_ms: expected less than half of cluster.node_timeout_ms (1000), got 500",
      }, lines)
    end)

    it("does not check a relation whose setting already failed", function()
      local _, _, lines = norm({ cluster = { redis = "redis://h", node_timeout_ms = 5, heartbeat_ms = 100 } })
      assert.are.same({ "test.lua: cluster.node_timeout_ms: expected an integer from 1000 to 3600000, got 5" }, lines)
    end)

    it("with HERALD_PORT among them", function()
      config.getenv = function(k) if k == "HERALD_PORT" then return "nope" end end
      local _, _, lines = norm({ listen = { port = "x" } })
      config.getenv = nil
      assert.are.same({ 'test.lua: listen.port: expected an integer from 0 to 65535, got "x"',
                        'HERALD_PORT: expected an integer from 0 to 65535, got "nope"' }, lines)
    end)
  end)

  describe("plugins", function()
    -- plugins/*.lua from the tree, or a source a test sets in sources.
    local tree_source = require("helper").plugin_source
    local sources = {}
    local function source_of(name) return sources[name] or tree_source(name) end
    before_each(function() config.plugin_source = source_of end)
    after_each(function() config.plugin_source = nil; sources = {} end)

    it("checks every plugin's options against its declaration and fills in defaults", function()
      local c = assert(norm({ plugins = { jwt = { secret = "k", leeway_s = 5 }, rate_limit = true,
                                          big_topics = { patterns = { "p:*" } },
                                          topic_acl = { rules = { { match = "u:{id}", allow = "owner" } } } } }))
      assert.are.same({
        { name = "big_topics", options = { patterns = { "p:*" } } },
        { name = "jwt", options = { secret = "k", param = "token", id_claim = "sub", leeway_s = 5, required = true } },
        { name = "rate_limit", options = { joins_per_second = 10, messages_per_second = 50 } },
        { name = "topic_acl", options = { rules = { { match = "u:{id}", allow = "owner" } }, default = "deny" } },
      }, c.plugins)
    end)

    it("takes a list, run in list order; a string is a plugin with its defaults", function()
      local c = assert(norm({ plugins = { { "topic_acl", rules = {}, default = "allow" }, "rate_limit",
                                          { "jwt", secret = "k" }, { "big_topics", patterns = { "p:*" } } } }))
      assert.are.same({
        { name = "topic_acl", options = { rules = {}, default = "allow" } },
        { name = "rate_limit", options = { joins_per_second = 10, messages_per_second = 50 } },
        { name = "jwt", options = { secret = "k", param = "token", id_claim = "sub", leeway_s = 0, required = true } },
        { name = "big_topics", options = { patterns = { "p:*" } } },
      }, c.plugins)
      assert.are.same({}, assert(norm({ plugins = {} })).plugins)
      -- The same options, checked the same way, in either form.
      local _, e1 = norm({ plugins = { { "rate_limit", per_secnd = 5 } } })
      local _, e2 = norm({ plugins = { rate_limit = { per_secnd = 5 } } })
      assert.are.equal('test.lua: plugins.rate_limit: unknown option "per_secnd" (rate_limit takes joins_per_second, messages_per_second)', e1)
      assert.are.equal(e2, e1)
      _, e1 = norm({ plugins = { { "jwt" } } })
      assert.are.equal("test.lua: plugins.jwt.secret: expected a non-empty string (required), got nil", e1)
    end)

    it("refuses a plugin listed twice, a bad item and the two forms mixed", function()
      local _, err = norm({ plugins = { "rate_limit", { "jwt", secret = "k" }, { "rate_limit", joins_per_second = 1 } } })
      assert.are.equal('test.lua: plugins: expected each plugin listed once, got "rate_limit" as items 1 and 3', err)
      _, err = norm({ plugins = { "jwt", big_topics = true } })
      assert.are.equal("test.lua: plugins: expected either a list of plugins or a table of name = options, not both in one table: "
        .. '{ { "jwt", secret = "..." }, "big_topics" } (run in list order) or '
        .. '{ jwt = { secret = "..." }, big_topics = true } (run in name order), got a table with both', err)
      _, err = norm({ plugins = { { secret = "k" } } })
      assert.are.equal('test.lua: plugins: expected item 1 as a plugin name or { "name", option = value, ... }, got nil', err)
      _, err = norm({ plugins = { "rate_limit", 5 } })
      assert.are.equal('test.lua: plugins: expected item 2 as a plugin name or { "name", option = value, ... }, got 5', err)
      _, err = norm({ plugins = { { "jwt", "k" } } })
      assert.are.equal('test.lua: plugins: expected item 1 as { "name", option = value, ... } (found key 2), got a table', err)
      _, err = norm({ plugins = { "bad name" } })
      assert.are.equal('test.lua: plugins: expected item 1 as a plugin name or { "name", option = value, ... }, got "bad name"', err)
      _, err = norm({ plugins = { "nope" } })
      assert.are.equal("test.lua: plugins: unknown plugin 'nope'", err)
      _, err = norm({ plugins = { [2] = "jwt" } })
      assert.are.equal("test.lua: plugins: expected a list of plugins (keys 1 to n only) or a table of name = options, got a table", err)
    end)

    it("names the file, the plugin and the option; several errors, several lines", function()
      local _, err, lines = norm({ listen = { port = "x" },
                                   plugins = { rate_limit = { per_secnd = 5 }, jwt = { secret = 42 }, nope = {} } })
      assert.are.same({
        'test.lua: listen.port: expected an integer from 0 to 65535, got "x"',
        "test.lua: plugins.jwt.secret: expected a non-empty string, got a number",
        "test.lua: plugins: unknown plugin 'nope'",
        'test.lua: plugins.rate_limit: unknown option "per_secnd" (rate_limit takes joins_per_second, messages_per_second)',
      }, lines)
      assert.is_nil(err:find("42", 1, true))
    end)

    it("takes a type name as a spec and reports a bad declaration", function()
      sources.mine = 'return { options = { a = "string", b = { type = "integr" } }, setup = function() end }'
      local _, err = norm({ plugins = { mine = { a = "x" } } })
      assert.are.equal('test.lua: plugins.mine: plugins/mine.lua: option "b" has the unknown type "integr"', err)
      sources.mine = 'return { options = { a = { type = "string", requried = true } }, setup = function() end }'
      _, err = norm({ plugins = { mine = {} } })
      assert.are.equal('test.lua: plugins.mine: plugins/mine.lua: option "a" has the unknown field "requried"', err)
      sources.mine = 'return { options = { a = { type = "string", min = 1 } }, setup = function() end }'
      _, err = norm({ plugins = { mine = {} } })
      assert.are.equal('test.lua: plugins.mine: plugins/mine.lua: option "a" has min, which type string does not take', err)
      sources.mine = 'return { options = { a = { type = "list", items = { type = "integer", check = 5 } } }, setup = function() end }'
      _, err = norm({ plugins = { mine = {} } })
      assert.are.equal('test.lua: plugins.mine: plugins/mine.lua: option "a" items has check = 5, not a function', err)
      sources.mine = 'return { options = { a = "string" }, setup = function() end }'
      assert.are.same({ { name = "mine", options = { a = "x" } } }, assert(norm({ plugins = { mine = { a = "x" } } })).plugins)
      _, err = norm({ plugins = { mine = { a = 1 } } })
      assert.are.equal("test.lua: plugins.mine.a: expected a string, got 1", err)
    end)

    it("refuses a plugin that does not declare its options", function()
      sources.old = "return function(options) return {} end"
      local _, err = norm({ plugins = { old = true } })
      assert.are.equal("test.lua: plugins.old: plugins/old.lua must return { options = { ... }, "
                       .. "setup = function(options) ... end }", err)
      sources.old = "return { options = {}, setup = function() end, x = herald.glob }"
      _, err = norm({ plugins = { old = true } })
      assert.matches("^test.lua: plugins.old: plugins/old.lua:1: attempt to index global 'herald'", err)
    end)

    it("runs a declared check and reports what it says, or that it failed", function()
      sources.mine = [[return { options = { n = { type = "integer", check = function(v)
        if v % 2 == 1 then return "must be even" end
        if v == 4 then error("boom", 0) end
      end } }, setup = function() end }]]
      assert.truthy(norm({ plugins = { mine = { n = 2 } } }))
      local _, err = norm({ plugins = { mine = { n = 3 } } })
      assert.are.equal("test.lua: plugins.mine.n: must be even", err)
      _, err = norm({ plugins = { mine = { n = 4 } } })
      assert.are.equal("test.lua: plugins.mine.n: the plugin's check failed: boom", err)
      -- On list items too, with the item named.
      sources.mine = [[return { options = { l = { type = "list", items = { type = "list", items = { type = "integer",
        check = function(v) if v < 0 then return "must not be negative" end end } } } }, setup = function() end }]]
      _, err = norm({ plugins = { mine = { l = { { 1 }, { 2, -3 } } } } })
      assert.are.equal("test.lua: plugins.mine.l: item 2: item 2: must not be negative", err)
    end)
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
