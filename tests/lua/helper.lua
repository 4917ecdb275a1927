-- Loads the real herald API for specs: the C binding's pure functions (the
-- Lua module herald.c, built by CMake) under lua/herald/init.lua, and
-- plugins in a sandbox like the server's.
local M = {}
package.cpath = (os.getenv("HERALD_LUA_CPATH") or "build/lua/?.so") .. ";" .. package.cpath
M.c = require("herald.c")
M.herald = assert(loadfile("lua/herald/init.lua"))(M.c)

-- Loads plugins/<name>.lua with `herald` (optionally a table overriding
-- some of its fields) and calls its factory with options.
function M.plugin(name, options, overrides)
  local h = M.herald
  if overrides then
    h = setmetatable(overrides, { __index = M.herald })
  end
  local env = setmetatable({ herald = h }, { __index = _G })
  local chunk = assert(loadfile("plugins/" .. name .. ".lua"))
  setfenv(chunk, env)
  return chunk()(options)
end

-- Makes an HS256 JWT with the real crypto functions.
function M.jwt(claims, secret, header)
  local c = M.herald.crypto
  local h64 = c.b64url_encode(M.herald.json.encode(header or { alg = "HS256", typ = "JWT" }))
  local p64 = c.b64url_encode(M.herald.json.encode(claims))
  return h64 .. "." .. p64 .. "." .. c.b64url_encode(c.hmac_sha256(secret, h64 .. "." .. p64))
end

return M
