-- Specs for plugins/*.lua against the real herald API and crypto.
package.path = "tests/lua/?.lua;" .. package.path
local helper = require("helper")
local herald = helper.herald

local function req(params, token) return { params = params or {}, headers = {}, token = token } end

describe("plugin jwt", function()
  local secret = "s3cret"
  local jwt = helper.plugin("jwt", { secret = secret })

  it("accepts a valid token: id from sub, claims as assigns", function()
    local t = helper.jwt({ sub = "user:1", role = "admin", exp = herald.now() + 60 }, secret)
    local ident = jwt.authenticate(req({ token = t }))
    assert.are.equal("user:1", ident.id)
    assert.are.equal("admin", ident.assigns.role)
  end)
  it("reads the subprotocol token too", function()
    local t = helper.jwt({ sub = 7 }, secret)
    assert.are.equal("7", jwt.authenticate(req({}, t)).id)
  end)
  it("refuses bad signatures, alg none, expired and not-yet-valid tokens", function()
    local good = helper.jwt({ sub = "u" }, secret)
    local function refuse(token, reason)
      local id, why = jwt.authenticate(req({ token = token }))
      assert.is_nil(id)
      assert.are.equal(reason, why)
    end
    refuse(helper.jwt({ sub = "u" }, "other"), "invalid token")
    refuse(good:gsub("%.[^.]+$", ".AAAA"), "invalid token")
    refuse(helper.jwt({ sub = "u" }, secret, { alg = "none" }), "invalid token")
    refuse(helper.jwt({ sub = "u", exp = herald.now() - 10 }, secret), "token expired")
    refuse(helper.jwt({ sub = "u", nbf = herald.now() + 100 }, secret), "invalid token")
    refuse("not.a.jwt!", "invalid token")
    refuse(nil, "missing token")
  end)
  it("defers without a token when not required; honours leeway and assigns_claims", function()
    local opt = helper.plugin("jwt", { secret = secret, required = false, leeway_s = 30, assigns_claims = { "role" } })
    assert.are.equal(0, select("#", opt.authenticate(req())))
    local t = helper.jwt({ sub = "u", role = "r", other = 1, exp = herald.now() - 10 }, secret)
    local ident = opt.authenticate(req({ token = t }))
    assert.are.same({ role = "r" }, ident.assigns)
  end)
  it("refuses bad options", function()
    assert.has_error(function() helper.plugin("jwt", {}) end, "plugin jwt: option secret must be a non-empty string")
  end)
end)

describe("plugin topic_acl", function()
  local acl = helper.plugin("topic_acl", { rules = {
    { match = "user:{id}", allow = "owner" },
    { match = "public:*", allow = "all" },
    { match = "admin:*", allow = { role = "admin" } },
    { match = "closed", allow = "none" },
  } })
  local alice = { id = "alice", assigns = { role = "admin" } }
  local bob = { id = "bob", assigns = {} }
  it("owner rules admit only that identity", function()
    assert.is_true(acl.join(alice, "user:alice"))
    local ok, why = acl.join(bob, "user:alice")
    assert.is_false(ok)
    assert.are.equal("unauthorized", why)
  end)
  it("all, none, assigns, and the default", function()
    assert.is_true(acl.join(bob, "public:news"))
    assert.is_false(acl.join(alice, "closed"))
    assert.is_true(acl.join(alice, "admin:panel"))
    assert.is_false(acl.join(bob, "admin:panel"))
    assert.is_false(acl.join(alice, "elsewhere"))
    local open = helper.plugin("topic_acl", { rules = {}, default = "defer" })
    assert.are.equal(0, select("#", open.join(bob, "anything")))
  end)
  it("escapes pattern characters", function()
    local a = helper.plugin("topic_acl", { rules = { { match = "a.b%c*", allow = "all" } } })
    assert.is_true(a.join(bob, "a.b%cxyz"))
    assert.is_false(a.join(bob, "aXb%c"))
  end)
end)

describe("plugin big_topics", function()
  it("marks matching topics untracked", function()
    local b = helper.plugin("big_topics", { patterns = { "public:*", "news" } })
    assert.are.same({ tracked = false }, b.topic("public:x"))
    assert.are.same({ tracked = false }, b.topic("news"))
    assert.is_nil(b.topic("newsroom"))
    assert.has_error(function() helper.plugin("big_topics", { patterns = {} }) end)
  end)
end)

describe("plugin rate_limit", function()
  it("allows up to the limit per second, then refuses until the window resets", function()
    local reset
    local rl = helper.plugin("rate_limit", { joins_per_second = 3, messages_per_second = 2 },
      { every = function(ms, fn) assert.are.equal(1000, ms); reset = fn end })
    local s1, s2 = { conn_id = 1 }, { conn_id = 2 }
    for _ = 1, 3 do assert.are.equal(0, select("#", rl.join(s1))) end
    local ok, why = rl.join(s1)
    assert.is_false(ok)
    assert.are.equal("rate limited", why)
    assert.are.equal(0, select("#", rl.join(s2))) -- per socket
    rl.message(s1); rl.message(s1)
    assert.is_false(rl.message(s1))
    reset()
    assert.are.equal(0, select("#", rl.join(s1)))
  end)
end)
