-- Specs for plugins/*.lua against the real herald API and crypto (the C
-- module herald.c), each plugin loaded in a sandbox like the server's.
package.path = "tests/lua/?.lua;" .. package.path
local helper = require("helper")
local herald = helper.herald
local count = helper.count

local function req(params, token) return { params = params or {}, headers = {}, token = token, remote_addr = "127.0.0.1" } end
local function socket(id, assigns, conn_id) return { id = id, conn_id = conn_id or 1, assigns = assigns or {} } end

describe("plugin jwt", function()
  local secret = "s3cret"
  local jwt = helper.plugin("jwt", { secret = secret })
  local function refused(plugin, r, reason)
    local id, why = plugin.authenticate(r)
    assert.is_nil(id)
    assert.are.equal(reason, why)
  end

  it("accepts a valid token: the id from sub, every claim in assigns", function()
    local exp = math.floor(herald.now()) + 60
    local t = helper.jwt({ sub = "user:1", role = "admin", exp = exp }, secret)
    local ident = jwt.authenticate(req({ token = t }))
    assert.are.equal("user:1", ident.id)
    assert.are.same({ sub = "user:1", role = "admin", exp = exp }, ident.assigns)
  end)

  it("reads the Phoenix subprotocol token when the param is absent or empty", function()
    local t = helper.jwt({ sub = 7 }, secret)
    assert.are.equal("7", jwt.authenticate(req({}, t)).id)
    assert.are.equal("7", jwt.authenticate(req({ token = "" }, t)).id)
  end)

  it("reads another param, another id claim; large numeric ids stay integers", function()
    local p = helper.plugin("jwt", { secret = secret, param = "jwt", id_claim = "uid" })
    local t = helper.jwt({ uid = 123456789012345, sub = "ignored" }, secret)
    assert.are.equal("123456789012345", p.authenticate(req({ jwt = t })).id)
    refused(p, req({ token = t }), "missing token")
  end)

  it("refuses a wrong signature or a tampered token", function()
    local good = helper.jwt({ sub = "u" }, secret)
    refused(jwt, req({ token = helper.jwt({ sub = "u" }, "other") }), "invalid token")
    refused(jwt, req({ token = (good:gsub("%.[^.]+$", ".AAAA")) }), "invalid token")
    local h64, _, s64 = good:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    local forged = herald.crypto.b64url_encode(herald.json.encode({ sub = "admin" }))
    refused(jwt, req({ token = h64 .. "." .. forged .. "." .. s64 }), "invalid token")
  end)

  it("accepts only alg HS256", function()
    refused(jwt, req({ token = helper.jwt({ sub = "u" }, secret, { alg = "none" }) }), "invalid token")
    refused(jwt, req({ token = helper.jwt({ sub = "u" }, secret, { alg = "HS512" }) }), "invalid token")
    refused(jwt, req({ token = helper.jwt({ sub = "u" }, secret, { typ = "JWT" }) }), "invalid token")
    -- An unsigned token as alg none produces it: empty signature.
    local c = herald.crypto
    local unsigned = c.b64url_encode('{"alg":"none"}') .. "." .. c.b64url_encode('{"sub":"u"}') .. "."
    refused(jwt, req({ token = unsigned }), "invalid token")
    assert.are.equal("u", jwt.authenticate(req({ token = helper.jwt({ sub = "u" }, secret, { alg = "HS256" }) })).id)
  end)

  it("refuses expired and not-yet-valid tokens", function()
    local now = herald.now()
    refused(jwt, req({ token = helper.jwt({ sub = "u", exp = now - 10 }, secret) }), "token expired")
    refused(jwt, req({ token = helper.jwt({ sub = "u", exp = math.floor(now) }, secret) }), "token expired")
    refused(jwt, req({ token = helper.jwt({ sub = "u", nbf = now + 100 }, secret) }), "invalid token")
    refused(jwt, req({ token = helper.jwt({ sub = "u", exp = "tomorrow" }, secret) }), "invalid token")
    assert.are.equal("u", jwt.authenticate(req({ token = helper.jwt({ sub = "u", nbf = now - 1, exp = now + 60 }, secret) })).id)
  end)

  it("refuses malformed tokens and claims without an identity", function()
    for _, bad in ipairs({ "not.a.jwt!", "abc", "a.b", "a.b.c.d", "....", "a..c" }) do
      refused(jwt, req({ token = bad }), "invalid token")
    end
    refused(jwt, req({ token = helper.jwt({ role = "x" }, secret) }), "invalid token")
    refused(jwt, req({ token = helper.jwt({ sub = "" }, secret) }), "invalid token")
    refused(jwt, req({ token = helper.jwt({ sub = { "a" } }, secret) }), "invalid token")
    refused(jwt, req({ token = helper.jwt({ "an", "array" }, secret) }), "invalid token")
    -- A payload that is not JSON, correctly signed.
    local c = herald.crypto
    local h64, p64 = c.b64url_encode('{"alg":"HS256"}'), c.b64url_encode("sub=u")
    local t = h64 .. "." .. p64 .. "." .. c.b64url_encode(c.hmac_sha256(secret, h64 .. "." .. p64))
    refused(jwt, req({ token = t }), "invalid token")
  end)

  it("refuses a missing token when required (the default)", function()
    refused(jwt, req(), "missing token")
    refused(jwt, req({ token = "" }), "missing token")
  end)

  it("defers without a token when not required, and still refuses bad ones", function()
    local opt = helper.plugin("jwt", { secret = secret, required = false })
    assert.are.equal(0, count(opt.authenticate(req())))
    refused(opt, req({ token = "x.y.z" }), "invalid token")
  end)

  it("honours leeway_s on exp and nbf, and copies only assigns_claims", function()
    local opt = helper.plugin("jwt", { secret = secret, leeway_s = 30, assigns_claims = { "role", "absent" } })
    local now = herald.now()
    local ident = opt.authenticate(req({ token = helper.jwt({ sub = "u", role = "r", other = 1, exp = now - 10 }, secret) }))
    assert.are.same({ role = "r" }, ident.assigns)
    assert.is_table(opt.authenticate(req({ token = helper.jwt({ sub = "u", nbf = now + 10 }, secret) })))
    refused(opt, req({ token = helper.jwt({ sub = "u", exp = now - 40 }, secret) }), "token expired")
  end)

  it("refuses bad options, naming the plugin, the option and what it takes", function()
    local function rejects(options, msg)
      assert.has_error(function() helper.plugin("jwt", options) end, msg)
    end
    rejects({}, "plugins.jwt.secret: expected a non-empty string (required), got nil")
    rejects({ secret = "" }, 'plugins.jwt.secret: expected a non-empty string, got ""')
    rejects({ secret = "s", leeway_s = -1 }, "plugins.jwt.leeway_s: expected a number >= 0, got -1")
    rejects({ secret = "s", leeway_s = 0 / 0 }, "plugins.jwt.leeway_s: expected a number >= 0, got nan")
    rejects({ secret = "s", required = "yes" }, 'plugins.jwt.required: expected true or false, got "yes"')
    rejects({ secret = "s", id_claim = 1 }, "plugins.jwt.id_claim: expected a non-empty string, got 1")
    rejects({ secret = "s", param = {} }, "plugins.jwt.param: expected a non-empty string, got an empty table")
    rejects({ secret = "s", assigns_claims = "role" },
      'plugins.jwt.assigns_claims: expected a list, each item a string, got "role"')
    rejects({ secret = "s", assigns_claims = { role = true } },
      "plugins.jwt.assigns_claims: expected a list, each item a string, got a table")
    rejects({ secret = "s", assigns_claims = { "role", 7 } },
      "plugins.jwt.assigns_claims: item 2: expected a string, got 7")
    rejects({ secret = "s", secrte = "s" },
      'plugins.jwt: unknown option "secrte" (jwt takes assigns_claims, id_claim, leeway_s, param, required, secret)')
  end)

  it("reports every bad option, one line each", function()
    assert.has_error(function() helper.plugin("jwt", { sceret = "s", leeway_s = "1", required = 0 }) end,
      'plugins.jwt: unknown option "sceret" (jwt takes assigns_claims, id_claim, leeway_s, param, required, secret)\n'
      .. 'plugins.jwt.leeway_s: expected a number >= 0, got "1"\n'
      .. "plugins.jwt.required: expected true or false, got 0\n"
      .. "plugins.jwt.secret: expected a non-empty string (required), got nil")
  end)

  it("never shows the secret in an error", function()
    local function hidden(secret, shown, want)
      local ok, err = pcall(helper.plugin, "jwt", { secret = secret })
      assert.is_false(ok)
      assert.are.equal(("plugins.jwt.secret: expected %s, got %s"):format(want or "a non-empty string", shown), err)
    end
    hidden(1234567, "a number")
    hidden("hunter2\0", "a string with a NUL byte", "a non-empty string without NUL bytes")
    hidden({ "hunter2" }, "a table")
    hidden(true, "a boolean")
  end)

  it("fills in the defaults", function()
    local options = assert(helper.plugin_options("jwt", { secret = "s" }))
    assert.are.same({ secret = "s", param = "token", id_claim = "sub", leeway_s = 0, required = true }, options)
  end)
end)

describe("plugin topic_acl", function()
  local acl = helper.plugin("topic_acl", { rules = {
    { match = "user:{id}", allow = "owner" },
    { match = "public:*", allow = "all" },
    { match = "admin:*", allow = { role = "admin" } },
    { match = "team:*:{id}", allow = { staff = true } },
    { match = "closed", allow = "none" },
  } })
  local alice = socket("alice", { role = "admin", staff = true })
  local bob = socket("bob")

  it("owner rules admit only the identity that fills {id}", function()
    assert.is_true(acl.join(alice, "user:alice"))
    local ok, why = acl.join(bob, "user:alice")
    assert.is_false(ok)
    assert.are.equal("unauthorized", why)
    assert.is_false(acl.join(alice, "user:alice2"))
    assert.is_false(acl.join(alice, "user:"))          -- {id} is never empty: the default decides
    assert.is_false(acl.join(socket("a.b"), "user:aXb")) -- the identity is literal, not a pattern
    assert.is_true(acl.join(socket("a.b"), "user:a.b"))
    assert.is_true(acl.join(socket("x:y"), "user:x:y"))
  end)

  it("all, none and assigns rules", function()
    assert.is_true(acl.join(bob, "public:news"))
    assert.is_true(acl.join(bob, "public:"))
    assert.is_false(acl.join(alice, "closed"))
    assert.is_false(acl.join(bob, "closed"))
    assert.is_true(acl.join(alice, "admin:panel"))
    local ok, why = acl.join(bob, "admin:panel")
    assert.is_false(ok)
    assert.are.equal("unauthorized", why)
    assert.is_false(acl.join(socket("carol", { role = "user" }), "admin:panel"))
  end)

  it("an assigns rule with {id} needs both the owner and the assigns", function()
    local carol = socket("c:d", { staff = true })
    assert.is_true(acl.join(carol, "team:x:y:c:d"))   -- * and {id} split at the right place
    assert.is_false(acl.join(carol, "team:x:alice"))
    assert.is_false(acl.join(socket("bob", { staff = false }), "team:x:bob"))
  end)

  it("the first matching rule wins", function()
    local a = helper.plugin("topic_acl", { rules = {
      { match = "room:lobby", allow = "all" },
      { match = "room:*", allow = "none" },
      { match = "room:lobby", allow = "none" },
    } })
    assert.is_true(a.join(bob, "room:lobby"))
    assert.is_false(a.join(bob, "room:other"))
    -- An owner rule decides for every topic it matches, whatever comes after.
    local b = helper.plugin("topic_acl", { rules = {
      { match = "user:{id}", allow = "owner" },
      { match = "user:*", allow = "all" },
    } })
    assert.is_false(b.join(bob, "user:alice"))
  end)

  it("default: deny, allow or defer when no rule matches", function()
    local ok, why = acl.join(alice, "elsewhere")
    assert.is_false(ok)
    assert.are.equal("unauthorized", why)
    local allow = helper.plugin("topic_acl", { rules = { { match = "x", allow = "none" } }, default = "allow" })
    assert.is_true(allow.join(bob, "anything"))
    assert.is_false(allow.join(bob, "x"))
    local defer = helper.plugin("topic_acl", { rules = {}, default = "defer" })
    assert.are.equal(0, count(defer.join(bob, "anything")))
  end)

  it("treats pattern characters in match literally", function()
    local a = helper.plugin("topic_acl", { rules = { { match = "a.b%c(*)", allow = "all" } } })
    assert.is_true(a.join(bob, "a.b%c(xyz)"))
    assert.is_true(a.join(bob, "a.b%c()"))
    assert.is_false(a.join(bob, "aXb%c(x)"))
  end)

  it("takes an identity literally, '*' and pattern bytes included", function()
    local a = helper.plugin("topic_acl", { rules = { { match = "user:{id}", allow = "owner" } } })
    assert.is_false(a.join(socket("*"), "user:bob"))   -- not a wildcard
    assert.is_false(a.join(socket("*"), "user:"))
    assert.is_true(a.join(socket("*"), "user:*"))
    assert.is_false(a.join(socket("a*"), "user:abc"))
    assert.is_true(a.join(socket("a*"), "user:a*"))
    assert.is_false(a.join(socket("a*c"), "user:abc"))
    assert.is_true(a.join(socket("%d.+"), "user:%d.+"))
    assert.is_false(a.join(socket("%d.+"), "user:5xx"))
    assert.is_true(a.join(socket(42), "user:42"))     -- a number identity, as tostring writes it
    -- {id} between "*"s and with an identity holding "*": only the literal split counts.
    local b = helper.plugin("topic_acl", { rules = { { match = "*:{id}:*", allow = "owner" } } })
    assert.is_true(b.join(socket("x*y"), "a:x*y:b"))
    assert.is_true(b.join(socket("x*y"), "a:b:x*y:c:d"))
    assert.is_false(b.join(socket("x*y"), "a:xzy:b"))
    assert.is_false(b.join(socket("x*"), "a:xy:b"))
    assert.is_false(b.join(socket(""), "a::b")) -- {id} is never empty: the default (deny) decides
  end)

  it("{id} stands for a non-empty run, also next to '*'", function()
    local a = helper.plugin("topic_acl", { rules = {
      { match = "x*{id}", allow = "all" },
      { match = "{id}*y", allow = "all" },
      { match = "p{id}{id}q", allow = "all" },
    }, default = "deny" })
    assert.is_false(a.join(bob, "x"))       -- x, then at least one byte
    assert.is_true(a.join(bob, "xa"))
    assert.is_true(a.join(bob, "xx"))
    assert.is_false(a.join(bob, "y"))
    assert.is_true(a.join(bob, "ay"))
    assert.is_false(a.join(bob, "pq"))
    assert.is_false(a.join(bob, "paq"))     -- two {id}s: two bytes at least
    assert.is_true(a.join(bob, "pabq"))
  end)

  it("an identity must fill every {id} of a rule", function()
    local a = helper.plugin("topic_acl", { rules = { { match = "dm:{id}:{id}", allow = "owner" } } })
    assert.is_true(a.join(socket("a"), "dm:a:a"))
    assert.is_false(a.join(socket("a"), "dm:a:b"))
    assert.is_true(a.join(socket("a:a"), "dm:a:a:a:a"))
    assert.is_true(a.join(socket("*"), "dm:*:*"))
    assert.is_false(a.join(socket("*"), "dm:*:x"))
    local ok, why = a.join(socket("a"), "dm:b:b")
    assert.is_false(ok)
    assert.are.equal("unauthorized", why)
  end)

  it("matches topics holding '*', NUL and high bytes", function()
    local a = helper.plugin("topic_acl", { rules = {
      { match = "pub:*", allow = "all" },
      { match = "é:{id}", allow = "owner" },
    } })
    assert.is_true(a.join(bob, "pub:*"))
    assert.is_true(a.join(bob, "pub:\0x"))
    assert.is_true(a.join(bob, "pub:a\0b"))
    assert.is_true(a.join(socket("ü"), "é:ü"))
    assert.is_false(a.join(socket("u"), "é:ü"))
  end)

  it("refuses a NUL byte in match (it used to cut the pattern short)", function()
    assert.has_error(function()
      helper.plugin("topic_acl", { rules = { { match = "news\0x", allow = "none" } } })
    end, "plugins.topic_acl.rules: rule 1: match must not contain a NUL byte")
  end)

  it("refuses bad options, naming the plugin and the option", function()
    local function rejects(options, msg)
      assert.has_error(function() helper.plugin("topic_acl", options) end, msg)
    end
    rejects({}, "plugins.topic_acl.rules: expected a list, each item a table (required), got nil")
    rejects({ rules = {}, default = "maybe" },
      'plugins.topic_acl.default: expected one of "deny", "allow", "defer", got "maybe"')
    rejects({ rules = { { match = "x", allow = "some" } } },
      'plugins.topic_acl.rules: rule 1: allow must be "all", "owner", "none" or a table of assigns')
    rejects({ rules = { { match = "x:*", allow = "owner" } } },
      'plugins.topic_acl.rules: rule 1: allow = "owner" needs {id} in match')
    rejects({ rules = { { allow = "all" } } }, "plugins.topic_acl.rules: rule 1: match must be a non-empty string")
    rejects({ rules = { { match = "x", allow = {} } } },
      "plugins.topic_acl.rules: rule 1: an allow table must name at least one assign")
    rejects({ rules = { { match = "x", allow = { role = { "a" } } } } },
      "plugins.topic_acl.rules: rule 1: an allow table maps assign names to strings, numbers or booleans")
    rejects({ rules = { x = { match = "x", allow = "all" } } },
      "plugins.topic_acl.rules: expected a list, each item a table, got a table")
    rejects({ rules = { "user:*" } }, 'plugins.topic_acl.rules: item 1: expected a table, got "user:*"')
    rejects({ rules = {}, deafult = "allow" }, 'plugins.topic_acl: unknown option "deafult" (topic_acl takes default, rules)')
  end)
end)

describe("plugin big_topics", function()
  local b = helper.plugin("big_topics", { patterns = { "public:*", "news", "a.b" } })
  it("marks matching topics untracked and has no opinion on others", function()
    assert.are.same({ tracked = false }, b.topic("public:x"))
    assert.are.same({ tracked = false }, b.topic("public:"))
    assert.are.same({ tracked = false }, b.topic("news"))
    assert.are.same({ tracked = false }, b.topic("a.b"))
    assert.is_nil(b.topic("newsroom"))
    assert.is_nil(b.topic("aXb"))
    assert.is_nil(b.topic("xpublic:x"))
  end)
  it("matches '*' runs and takes every other byte literally", function()
    local p = helper.plugin("big_topics", { patterns = { "a.b%c(*)", "*:live", "x**y", "[z]-?^$+" } })
    assert.are.same({ tracked = false }, p.topic("a.b%c(xyz)"))
    assert.are.same({ tracked = false }, p.topic("a.b%c()"))
    assert.is_nil(p.topic("aXb%c(x)"))
    assert.is_nil(p.topic("a.b%c(x"))
    assert.are.same({ tracked = false }, p.topic("game:1:live"))
    assert.are.same({ tracked = false }, p.topic(":live"))
    assert.is_nil(p.topic("live"))
    assert.are.same({ tracked = false }, p.topic("xy"))
    assert.are.same({ tracked = false }, p.topic("x*y"))
    assert.are.same({ tracked = false }, p.topic("[z]-?^$+"))
    assert.is_nil(p.topic("z"))
    assert.is_nil(p.topic(""))
    assert.are.same({ tracked = false }, helper.plugin("big_topics", { patterns = { "*" } }).topic(""))
  end)
  it("matches topics holding NUL and high bytes", function()
    local p = helper.plugin("big_topics", { patterns = { "bin:*", "é" } })
    assert.are.same({ tracked = false }, p.topic("bin:\0\255"))
    assert.are.same({ tracked = false }, p.topic("é"))
    assert.is_nil(p.topic("e"))
    assert.is_nil(p.topic("é\0"))
  end)
  it("refuses a NUL byte in a pattern (it used to cut the pattern short)", function()
    assert.has_error(function() helper.plugin("big_topics", { patterns = { "news\0x" } }) end,
      'plugins.big_topics.patterns: item 1: expected a non-empty string without NUL bytes, got "news\\0x"')
  end)
  it("refuses bad options", function()
    local function rejects(options, msg)
      assert.has_error(function() helper.plugin("big_topics", options) end, msg)
    end
    rejects({}, "plugins.big_topics.patterns: expected a non-empty list, each item a non-empty string (required), got nil")
    rejects({ patterns = {} },
      "plugins.big_topics.patterns: expected a non-empty list, each item a non-empty string, got an empty table")
    rejects({ patterns = { "ok", 3 } }, "plugins.big_topics.patterns: item 2: expected a non-empty string, got 3")
    rejects({ patterns = { "ok", "" } }, 'plugins.big_topics.patterns: item 2: expected a non-empty string, got ""')
    rejects({ pattern = { "ok" } }, 'plugins.big_topics: unknown option "pattern" (big_topics takes patterns)\n'
      .. "plugins.big_topics.patterns: expected a non-empty list, each item a non-empty string (required), got nil")
  end)
end)

describe("plugin rate_limit", function()
  -- A limiter on a clock the spec moves: clock.ms is herald.monotonic_ms().
  local function limiter(options)
    local clock = { ms = 5000 }
    local rl = helper.plugin("rate_limit", options, { monotonic_ms = function() return clock.ms end })
    return rl, clock
  end

  it("allows joins up to the limit per socket, then refuses until the next second", function()
    local rl, clock = limiter({ joins_per_second = 3, messages_per_second = 2 })
    local s1, s2 = socket("a", nil, 1), socket("a", nil, 2) -- same identity, two connections
    for _ = 1, 3 do assert.are.equal(0, count(rl.join(s1, "t", {}))) end
    local ok, why = rl.join(s1, "t", {})
    assert.is_false(ok)
    assert.are.equal("rate limited", why)
    clock.ms = 5999
    assert.is_false(rl.join(s1, "t", {}))
    assert.are.equal(0, count(rl.join(s2, "t", {}))) -- counted per socket
    clock.ms = 6000
    assert.are.equal(0, count(rl.join(s1, "t", {})))
  end)

  it("counts messages apart from joins", function()
    local rl, clock = limiter({ joins_per_second = 1, messages_per_second = 2 })
    local s = socket("a")
    assert.are.equal(0, count(rl.join(s, "t", {})))
    assert.are.equal(0, count(rl.message(s, "t", "e", {})))
    assert.are.equal(0, count(rl.message(s, "t", "e", {})))
    local ok, why = rl.message(s, "t", "e", {})
    assert.is_false(ok)
    assert.are.equal("rate limited", why)
    clock.ms = clock.ms + 1000
    assert.are.equal(0, count(rl.message(s, "t", "e", {})))
  end)

  it("forgets a socket when it disconnects (no timer)", function()
    local timers = {}
    local rl = helper.plugin("rate_limit", { joins_per_second = 1 },
      { every = function(ms, fn) timers[#timers + 1] = fn end, monotonic_ms = function() return 0 end })
    assert.are.equal(0, #timers)
    local s, other = socket("a", nil, 7), socket("b", nil, 8)
    assert.are.equal(0, count(rl.join(s, "t", {})))
    assert.are.equal(0, count(rl.join(other, "t", {})))
    assert.is_false(rl.join(s, "t", {}))
    assert.are.equal(0, count(rl.disconnect(s, "closed")))
    assert.are.equal(0, count(rl.join(s, "t", {}))) -- same window: its counts went
    assert.is_false(rl.join(other, "t", {}))        -- the other socket's stay
    rl.disconnect(socket("c", nil, 9), "closed")     -- never counted: nothing to do
  end)

  it("defaults to 10 joins and 50 messages a second", function()
    local rl = limiter({})
    local s = socket("a")
    for _ = 1, 10 do assert.are.equal(0, count(rl.join(s, "t", {}))) end
    assert.is_false(rl.join(s, "t", {}))
    for _ = 1, 50 do assert.are.equal(0, count(rl.message(s, "t", "e", {}))) end
    assert.is_false(rl.message(s, "t", "e", {}))
  end)

  it("refuses bad options", function()
    local function rejects(options, msg)
      assert.has_error(function() helper.plugin("rate_limit", options) end, msg)
    end
    rejects({ joins_per_second = 0 }, "plugins.rate_limit.joins_per_second: expected an integer >= 1, got 0")
    rejects({ messages_per_second = 1.5 }, "plugins.rate_limit.messages_per_second: expected an integer >= 1, got 1.5")
    rejects({ joins_per_second = "5" }, 'plugins.rate_limit.joins_per_second: expected an integer >= 1, got "5"')
    rejects({ per_secnd = 5 },
      'plugins.rate_limit: unknown option "per_secnd" (rate_limit takes joins_per_second, messages_per_second)')
  end)
end)

-- Every plugin's declaration of its options, as `herald check` applies it
-- (config.plugin_options): a valid set passes, an unknown key and a wrong
-- type fail with a line naming the plugin and the key.
describe("plugin option declarations", function()
  local cases = {
    jwt = { valid = { secret = "s", param = "jwt", id_claim = "uid", leeway_s = 1.5, required = false,
                      assigns_claims = { "role" } },
            unknown = { secret = "s", leeway = 30 }, key = "leeway",
            wrong = { secret = "s", required = "no" },
            says = 'plugins.jwt.required: expected true or false, got "no"' },
    topic_acl = { valid = { rules = { { match = "public:*", allow = "all" } }, default = "defer" },
                  unknown = { rules = {}, rule = {} }, key = "rule",
                  wrong = { rules = "public:*" },
                  says = 'plugins.topic_acl.rules: expected a list, each item a table, got "public:*"' },
    big_topics = { valid = { patterns = { "public:*" } },
                   unknown = { patterns = { "a" }, patern = "b" }, key = "patern",
                   wrong = { patterns = "public:*" },
                   says = 'plugins.big_topics.patterns: expected a non-empty list, each item a non-empty string, got "public:*"' },
    rate_limit = { valid = { joins_per_second = 1, messages_per_second = 1000 },
                   unknown = { per_secnd = 5 }, key = "per_secnd",
                   wrong = { messages_per_second = true },
                   says = "plugins.rate_limit.messages_per_second: expected an integer >= 1, got true" },
    webhook_auth = { valid = { connect_url = "http://127.0.0.1:9/c", join_url = "http://127.0.0.1:9/j",
                               params = { "user" }, headers = { "X-Tenant" }, timeout_ms = 500,
                               on_failure = "allow", auth_token = "t" },
                     unknown = { connect_url = "http://127.0.0.1:9/c", url = "x" }, key = "url",
                     wrong = { connect_url = "http://127.0.0.1:9/c", on_failure = "deny" },
                     says = 'plugins.webhook_auth.on_failure: expected one of "refuse", "allow", got "deny"' },
  }

  it("covers every plugin in plugins/", function()
    for file in io.popen("ls plugins"):lines() do
      local name = file:match("^(.+)%.lua$")
      if name then assert.is_table(cases[name], "no case for plugins/" .. file) end
    end
  end)

  for name, case in pairs(cases) do
    describe(name, function()
      it("accepts a valid set of options", function()
        assert.is_table(helper.plugin_options(name, case.valid))
      end)
      it("refuses an unknown option, naming the plugin and the key", function()
        local _, errs = helper.plugin_options(name, case.unknown)
        local prefix = ('plugins.%s: unknown option "%s" (%s takes '):format(name, case.key, name)
        assert.are.equal(prefix, errs[1]:sub(1, #prefix))
      end)
      it("refuses a wrong type, naming the plugin, the key and the type", function()
        local _, errs = helper.plugin_options(name, case.wrong)
        assert.are.same({ case.says }, errs)
      end)
    end)
  end
end)

describe("the plugin sandbox", function()
  it("gives plugins the server's allow-list only", function()
    local env = helper.sandbox(herald)
    assert.is_nil(env.require)
    assert.is_nil(env.io)
    assert.is_nil(env.debug)
    assert.is_nil(env.loadstring)
    assert.is_nil(env.os.execute)
    assert.is_function(env.os.getenv)
    assert.are.equal(herald, env.herald)
  end)
end)

-- The plugins matched with Lua patterns built from their options before
-- herald.glob; these are those translations, to compare against.
describe("plugins big_topics and topic_acl against their former Lua patterns", function()
  local function escape(s) return (s:gsub("[%^%$%(%)%%%.%[%]%+%-%?%*]", "%%%0")) end
  local function lua_glob(p) return (escape(p):gsub("%%%*", ".*")) end
  local function old_big_topics(patterns, name)
    for _, p in ipairs(patterns) do
      if name:find("^" .. lua_glob(p) .. "$") then return true end
    end
    return false
  end
  local function old_topic_acl(rules, default, sock, topic)
    for _, r in ipairs(rules) do
      local parts = {}
      for piece in (r.match .. "{id}"):gmatch("(.-){id}") do parts[#parts + 1] = lua_glob(piece) end
      if topic:find("^" .. table.concat(parts, "(.+)") .. "$") then
        local a = r.allow
        if a == "all" then return true end
        if a == "none" then return false, "unauthorized" end
        if #parts > 1 and not topic:find("^" .. table.concat(parts, escape(tostring(sock.id))) .. "$") then
          return false, "unauthorized"
        end
        if a == "owner" then return true end
        for k, v in pairs(a) do
          if (sock.assigns or {})[k] ~= v then return false, "unauthorized" end
        end
        return true
      end
    end
    if default == "allow" then return true end
    if default == "deny" then return false, "unauthorized" end
  end

  -- A fixed pseudo-random sequence (the same cases on every run).
  local seed = 12345
  local function rand(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return math.floor(seed / 65536) % n + 1
  end
  local function gen(alphabet, max, min)
    local out = {}
    for i = 1, rand(max - (min or 0) + 1) - 1 + (min or 0) do out[i] = alphabet[rand(#alphabet)] end
    return table.concat(out)
  end
  local pattern_bytes = { "a", "b", "*", "**", "%", ".", ":", "(", "[", "-", "?", "^", "$", "{id}", "{", "}", "é" }
  local topic_bytes = { "a", "b", "*", "%", ".", ":", "(", "[", "-", "?", "^", "$", "{", "}", "é", "\0", "ab", "a:b" }
  local id_bytes = { "a", "b", "*", "%", ".", ":", "ab", "a*", "(", "-", "é" }

  it("big_topics: the same verdict on generated patterns and topics", function()
    local hits = 0
    for _ = 1, 1500 do
      local patterns = {}
      for i = 1, rand(3) do patterns[i] = gen(pattern_bytes, 6, 1) end
      local p = helper.plugin("big_topics", { patterns = patterns })
      for _ = 1, 8 do
        local name = gen(topic_bytes, 8)
        local want = old_big_topics(patterns, name)
        if want then hits = hits + 1 end
        assert.are.equal(want, p.topic(name) ~= nil, ("patterns %q, topic %q"):format(table.concat(patterns, "|"), name))
      end
    end
    assert.is_true(hits > 300) -- the cases do match, not only miss (462 of 12,000)
  end)

  it("topic_acl: the same verdict on generated rules, identities and topics", function()
    local allows = { "all", "none", "owner", { role = "x" } }
    local defaults = { "deny", "allow", "defer" }
    local admitted = 0
    for _ = 1, 1500 do
      local rules = {}
      for i = 1, rand(3) do
        local m, allow = gen(pattern_bytes, 6, 1), allows[rand(#allows)]
        if allow == "owner" and not m:find("{id}", 1, true) then m = m .. "{id}" end
        rules[i] = { match = m, allow = allow }
      end
      local default = defaults[rand(3)]
      local acl = helper.plugin("topic_acl", { rules = rules, default = default })
      for _ = 1, 8 do
        local sock = socket(gen(id_bytes, 3), { role = rand(2) == 1 and "x" or "y" })
        local topic = gen(topic_bytes, 8)
        local ok, why = old_topic_acl(rules, default, sock, topic)
        if ok then admitted = admitted + 1 end
        local got_ok, got_why = acl.join(sock, topic)
        local ms = {}
        for i, r in ipairs(rules) do ms[i] = r.match end
        local where = ("rules %q, id %q, topic %q"):format(table.concat(ms, "|"), sock.id, topic)
        assert.are.equal(ok, got_ok, where)
        assert.are.equal(why, got_why, where)
      end
    end
    assert.is_true(admitted > 1000)
  end)
end)
