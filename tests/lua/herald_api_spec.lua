-- Specs for lua/herald/init.lua over the real C binding (herald.c: the pure
-- functions of core/luapi.c).
package.path = "tests/lua/?.lua;" .. package.path
local helper = require("helper")
local herald = helper.herald
local json, crypto = herald.json, herald.crypto

describe("herald.json", function()
  it("round-trips nested values and null", function()
    local value = { a = { 1, 2, { b = "x", c = { true, false } } }, n = json.null, s = "é\"\\\n", f = 1.5, neg = -3 }
    local text = assert(json.encode(value))
    local back = assert(json.decode(text))
    assert.are.same(value, back)
    assert.are.equal(json.null, back.n)
    assert.are.same({ 1, json.null, 3 }, json.decode("[1,null,3]"))
    assert.are.equal(json.null, json.decode("null"))
    assert.are.equal("null", json.encode(json.null))
    assert.are.equal('{"k":null}', json.encode({ k = json.null }))
  end)

  it("encodes arrays, objects, numbers and strings exactly", function()
    assert.are.equal('[1,"two",true]', json.encode({ 1, "two", true }))
    assert.are.equal("{}", json.encode({}))
    assert.are.equal('{"a":{"b":[[1]]}}', json.encode({ a = { b = { { 1 } } } }))
    assert.are.equal("1700000000123", json.encode(1700000000123))
    assert.are.equal("0.5", json.encode(0.5))
    assert.are.equal('"a\\"b\\\\c\\n"', json.encode('a"b\\c\n'))
    assert.are.equal('"é"', json.encode("é"))
    assert.are.same({ ["1"] = "x", k = "y" }, json.decode(json.encode({ [1] = "x", k = "y" }))) -- mixed keys: an object
  end)

  it("refuses what JSON cannot hold, with nil and a reason", function()
    local function refuses(v, why)
      local text, err = json.encode(v)
      assert.is_nil(text)
      assert.matches(why, err)
    end
    refuses({ f = function() end }, "function")
    refuses(function() end, "function")
    refuses(0 / 0, "NaN")
    refuses(math.huge, "infinity")
    refuses({ x = { -math.huge } }, "infinity")
    refuses("\255", "UTF%-8")
    refuses({ ok = "a", bad = "\192\128" }, "UTF%-8")
    refuses({ ["\255"] = 1 }, "UTF%-8")
    local t = {}
    t.self = t
    refuses(t, "deep")
  end)

  it("decodes with nil and a reason on bad input", function()
    for _, bad in ipairs({ "{bad", "", "[1,", "{\"a\":}", "nul" }) do
      local v, err = json.decode(bad)
      assert.is_nil(v)
      assert.matches("invalid JSON", err)
    end
    assert.are.equal("x", json.decode('"x"'))
    assert.are.equal(42, json.decode("42"))
  end)
end)

describe("herald.crypto", function()
  it("computes HMAC-SHA256 (RFC 4231 test cases 1 and 2) and SHA-256", function()
    assert.are.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      crypto.hex(crypto.hmac_sha256(string.rep("\11", 20), "Hi There")))
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      crypto.hex(crypto.hmac_sha256("Jefe", "what do ya want for nothing?")))
    assert.are.equal(32, #crypto.hmac_sha256("k", ""))
    assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", crypto.hex(crypto.sha256("abc")))
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", crypto.hex(crypto.sha256("")))
  end)

  it("hex-encodes bytes in lowercase", function()
    assert.are.equal("00ff10ab", crypto.hex("\0\255\16\171"))
    assert.are.equal("", crypto.hex(""))
  end)

  it("encodes base64url without padding and round-trips any bytes", function()
    assert.are.equal("-_8", crypto.b64url_encode("\251\255"))
    assert.are.equal("+/8=", crypto.b64_encode("\251\255"))
    assert.are.equal("", crypto.b64url_encode(""))
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for len = 0, 7 do
      local s = all:sub(250 - len, 249)
      assert.are.equal(s, crypto.b64_decode(crypto.b64url_encode(s)))
      assert.are.equal(s, crypto.b64_decode(crypto.b64_encode(s)))
      assert.is_nil(crypto.b64url_encode(s):find("[=+/]"))
    end
    local big = all:rep(20) -- longer than one encoding slice
    assert.are.equal(big, crypto.b64_decode(crypto.b64url_encode(big)))
  end)

  it("decodes both alphabets, padded or not, and nil on invalid input", function()
    assert.are.equal("\251\255", crypto.b64_decode("-_8"))
    assert.are.equal("\251\255", crypto.b64_decode("+/8="))
    assert.are.equal("\251\255", crypto.b64_decode("+/8"))
    assert.are.equal("hello", crypto.b64_decode("aGVsbG8"))
    assert.is_nil(crypto.b64_decode("!!"))
    assert.is_nil(crypto.b64_decode("aGVs bG8"))
  end)

  it("compares strings in constant time", function()
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_true(crypto.equal("", ""))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "ab"))
    assert.is_false(crypto.equal("", "a"))
    assert.is_true(crypto.equal("a\0b", "a\0b"))
    assert.is_false(crypto.equal("a\0b", "a\0c"))
  end)
end)

describe("herald clocks", function()
  it("tells wall-clock seconds and monotonic milliseconds", function()
    local now = herald.now()
    assert.is_number(now)
    assert.is_true(math.abs(now - os.time()) < 2)
    local a = herald.monotonic_ms()
    local b = herald.monotonic_ms()
    assert.is_true(b >= a)
  end)
end)

describe("herald outside the server", function()
  it("checks arguments first, then says what is unavailable", function()
    assert.error_matches(function() herald.publish(1, "e", {}) end, "bad argument #1 to 'herald.publish'")
    assert.has_error(function() herald.publish("t", "e", {}) end, "herald.publish is not available outside the server")
    assert.has_error(function() herald.subscribers("t") end, "herald.subscribers is not available outside the server")
    assert.error_matches(function() herald.log("loud", "x") end, "bad argument #1 to 'herald.log'")
    assert.error_matches(function() herald.after("soon", function() end) end, "bad argument #1 to 'herald.after'")
    assert.error_matches(function() herald.every(1000, function() end) end, "not available outside the server")
    assert.error_matches(function() herald.connected({}) end, "bad argument #1 to 'herald.connected'")
    assert.error_matches(function() herald.assign({}, "k", 1) end, "bad argument #1 to 'herald.assign'")
    assert.error_matches(function() herald.assign({ conn_id = 1 }, 2, 1) end, "bad argument #2 to 'herald.assign'")
    assert.has_error(function() herald.assign({ conn_id = 1 }, "k", 1) end, "herald.assign is not available outside the server")
  end)
end)

describe("herald.glob", function()
  local glob = herald.glob

  it("matches whole names: '*' any run of bytes, every other byte itself", function()
    assert.is_true(glob("public:*", "public:news"))
    assert.is_true(glob("public:*", "public:"))
    assert.is_true(glob("news", "news"))
    assert.is_true(glob("*:lobby", "room:lobby"))
    assert.is_true(glob("a*c", "abbbc"))
    assert.is_true(glob("é*", "é!"))
    assert.is_true(glob("\255*", "\255\254"))
  end)

  it("refuses partial matches and other names", function()
    assert.is_false(glob("news", "newsroom"))
    assert.is_false(glob("news", "new"))
    assert.is_false(glob("news", "the news"))
    assert.is_false(glob("public:*", "xpublic:x"))
    assert.is_false(glob("public:*", "public"))
    assert.is_false(glob("a*c", "abd"))
    assert.is_false(glob("News", "news")) -- case matters
  end)

  it("an empty pattern matches only the empty name; '*' matches every name", function()
    assert.is_true(glob("", ""))
    assert.is_false(glob("", "a"))
    assert.is_true(glob("*", ""))
    assert.is_true(glob("*", "anything at all"))
    assert.is_false(glob("a", ""))
  end)

  it("handles runs of '*' and backtracks", function()
    assert.is_true(glob("**", ""))
    assert.is_true(glob("a**b", "ab"))
    assert.is_true(glob("a**b", "axyzb"))
    assert.is_true(glob("*a*", "a"))
    assert.is_true(glob("*ab", "aab"))
    assert.is_true(glob("a*b*c", "aXbYbc"))
    assert.is_true(glob("*x*x*x*", "xxx"))
    assert.is_false(glob("*x*x*x*", "xx"))
    assert.is_false(glob("a*b*c", "aXbYb"))
    assert.is_true(glob("*" .. ("a*"):rep(50) .. "b", ("a"):rep(200) .. "b"))
    assert.is_false(glob(("a*"):rep(50) .. "b", ("a"):rep(10000))) -- no blow-up
    assert.is_true(glob(("*"):rep(1000), ""))
  end)

  it("treats Lua pattern magic as literal bytes", function()
    for _, p in ipairs({ "a.b", "%d", "%", "[ab]", "a-b", "a+", "a?", "^x$", "(x)", "%*", "\\*", "." }) do
      assert.is_true(glob(p, p), p)
    end
    assert.is_false(glob("a.b", "aXb"))
    assert.is_false(glob("%d", "5"))
    assert.is_false(glob("[ab]", "a"))
    assert.is_false(glob("a-b", "ab"))
    assert.is_false(glob("a+", "aa"))
    assert.is_false(glob("a?", "a"))
    assert.is_false(glob(".", "x"))
    assert.is_true(glob("100%*", "100%!"))
    assert.is_true(glob("\\*", "\\x")) -- a backslash escapes nothing: it is literal, '*' a run
    assert.is_true(glob("*", "*"))
    assert.is_false(glob("a", "*"))
  end)

  it("matches names holding NUL bytes", function()
    assert.is_true(glob("a*", "a\0b"))
    assert.is_true(glob("*b", "a\0b"))
    assert.is_true(glob("*", "\0"))
    assert.is_false(glob("a", "a\0"))
    assert.is_false(glob("a*c", "a\0b"))
    assert.is_false(glob("", "\0"))
  end)

  it("raises on a pattern holding a NUL byte and on non-strings", function()
    assert.error_matches(function() glob("a\0b", "a") end,
      "bad argument #1 to 'herald.glob' %(pattern must not contain a NUL byte%)")
    assert.error_matches(function() helper.c.glob("a\0*", "a") end, "pattern contains a NUL byte")
    assert.error_matches(function() glob(nil, "a") end, "bad argument #1 to 'herald.glob'")
    assert.error_matches(function() glob({}, "a") end, "bad argument #1 to 'herald.glob'")
    assert.error_matches(function() glob("a") end, "bad argument #2 to 'herald.glob'")
    assert.error_matches(function() glob("a", 1) end, "bad argument #2 to 'herald.glob'")
    assert.error_matches(function() helper.c.glob({}, "a") end, "bad argument #1")
    assert.error_matches(function() helper.c.glob("a") end, "bad argument #2")
  end)

  it("returns exactly one boolean", function()
    assert.are.equal(1, helper.count(glob("a", "a")))
    assert.are.equal("boolean", type(helper.c.glob("a", "b")))
  end)
end)
