-- Specs for lua/herald/init.lua over the real C binding (herald.c).
package.path = "tests/lua/?.lua;" .. package.path
local helper = require("helper")
local herald = helper.herald

describe("herald.json", function()
  it("round-trips nested values and null", function()
    local text = assert(herald.json.encode({ a = { 1, 2, { b = "x" } }, n = herald.json.null }))
    local back = assert(herald.json.decode(text))
    assert.are.equal(2, back.a[2])
    assert.are.equal("x", back.a[3].b)
    assert.are.equal(herald.json.null, back.n)
    assert.are.equal('[1,"two",true]', herald.json.encode({ 1, "two", true }))
    assert.are.equal("{}", herald.json.encode({}))
  end)
  it("refuses what JSON cannot hold", function()
    assert.is_nil(herald.json.encode({ f = function() end }))
    assert.is_nil(herald.json.encode(0 / 0))
    assert.is_nil(herald.json.encode("\255"))
    local t = {}
    t.self = t
    local v, err = herald.json.encode(t)
    assert.is_nil(v)
    assert.matches("deep", err)
    local d, e = herald.json.decode("{bad")
    assert.is_nil(d)
    assert.matches("invalid JSON", e)
  end)
end)

describe("herald.crypto", function()
  it("computes HMAC-SHA256 (RFC 4231 cases 1 and 2)", function()
    local c = herald.crypto
    assert.are.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      c.hex(c.hmac_sha256(string.rep("\11", 20), "Hi There")))
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      c.hex(c.hmac_sha256("Jefe", "what do ya want for nothing?")))
    assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", c.hex(c.sha256("abc")))
  end)
  it("encodes base64url without padding and decodes both alphabets", function()
    local c = herald.crypto
    assert.are.equal("-_8", c.b64url_encode("\251\255"))
    assert.are.equal("+/8=", c.b64_encode("\251\255"))
    assert.are.equal("\251\255", c.b64_decode("-_8"))
    assert.are.equal("\251\255", c.b64_decode("+/8="))
    assert.is_nil(c.b64_decode("!!"))
  end)
  it("compares in constant time", function()
    assert.is_true(herald.crypto.equal("abc", "abc"))
    assert.is_false(herald.crypto.equal("abc", "abd"))
    assert.is_false(herald.crypto.equal("abc", "ab"))
  end)
end)

describe("herald outside the server", function()
  it("checks arguments and says what is unavailable", function()
    assert.has_error(function() herald.publish(1, "e", {}) end)
    assert.has_error(function() herald.publish("t", "e", {}) end, "herald.publish is not available outside the server")
    assert.is_number(herald.now())
  end)
end)
