-- Loads the real herald API for specs: the C binding's pure functions (the
-- Lua module herald.c, built by CMake as target herald_lua_c) under
-- lua/herald/init.lua, and plugins in a sandbox like the server's
-- (core/script.c build_sandbox). Run from the repository root:
--   HERALD_LUA_CPATH='<build>/lua/?.so' busted --lua=luajit tests/lua
local M = {}
package.cpath = (os.getenv("HERALD_LUA_CPATH") or "build/lua/?.so") .. ";" .. package.cpath
M.c = require("herald.c")
M.herald = assert(loadfile("lua/herald/init.lua"))(M.c)

-- The globals the server gives scripts and plugins, and nothing else.
local ALLOWED = { "assert", "error", "ipairs", "next", "pairs", "select", "tonumber", "tostring",
  "type", "unpack", "setmetatable", "getmetatable", "rawequal", "rawget", "rawset", "string",
  "table", "math", "bit", "pcall", "xpcall" }

-- A fresh environment over the allow-list with `herald` set to h: globals
-- a chunk sets stay in its own table, as in the server.
function M.sandbox(h)
  local allowed = { herald = h, os = { time = os.time, clock = os.clock, date = os.date, getenv = os.getenv } }
  for _, name in ipairs(ALLOWED) do allowed[name] = _G[name] end
  return setmetatable({}, { __index = allowed })
end

-- The config schema (lua/herald/config.lua), reading plugins/*.lua from the
-- source tree where the server reads the copies compiled into it.
package.path = "lua/?.lua;" .. package.path
M.config = require("herald.config")
function M.plugin_source(name)
  local f = io.open("plugins/" .. name .. ".lua", "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text
end

-- config.plugin_options(name, options) reading plugins/ from the tree: the
-- options with the defaults filled in, or nil and the list of error lines.
function M.plugin_options(name, options)
  local config = M.config
  local saved = config.plugin_source
  config.plugin_source = M.plugin_source
  local checked, errs = config.plugin_options(name, options)
  config.plugin_source = saved
  return checked, errs
end

-- Loads plugins/<name>.lua as the server does: its options checked against
-- its declaration (raising the config's error lines, without the file
-- name), through JSON, then setup(options) in a sandbox. overrides
-- (optional) replaces some fields of the herald table, for the server-only
-- calls (herald.every) that raise outside the server.
function M.plugin(name, options, overrides)
  local checked, errs = M.plugin_options(name, options)
  if not checked then error(table.concat(errs, "\n"), 0) end
  local h = M.herald
  checked = assert(h.json.decode(assert(h.json.encode(checked))))
  if overrides then h = setmetatable(overrides, { __index = M.herald }) end
  local chunk = assert(loadfile("plugins/" .. name .. ".lua"))
  setfenv(chunk, M.sandbox(h))
  local plugin = chunk()
  assert(type(plugin) == "table" and type(plugin.setup) == "function",
    "plugins/" .. name .. ".lua must return { options = ..., setup = function(options) }")
  return plugin.setup(checked)
end

-- Makes an HS256 JWT with the real crypto functions (header defaults to
-- {alg = "HS256", typ = "JWT"}).
function M.jwt(claims, secret, header)
  local c, json = M.herald.crypto, M.herald.json
  local h64 = c.b64url_encode(assert(json.encode(header or { alg = "HS256", typ = "JWT" })))
  local p64 = c.b64url_encode(assert(json.encode(claims)))
  return h64 .. "." .. p64 .. "." .. c.b64url_encode(c.hmac_sha256(secret, h64 .. "." .. p64))
end

-- The number of values a call returned (0 = the hook has no opinion).
function M.count(...) return select("#", ...) end

return M
