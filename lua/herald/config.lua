-- Herald's configuration schema: every setting, its default and its check.
--
-- The C core evaluates the operator's config file (plain Lua) in a sandbox,
-- then calls normalize(settings, source) with the table of globals the file
-- set. normalize returns a complete table with every default filled in, or
-- nil, the errors as one message of one line each (every line names the
-- file and the setting) and the list of those lines. It checks every
-- setting it can and reports every error it finds, not only the first.
local M = {}

-- Captured before the operator's file runs: it sees copies of these
-- libraries, but the validator must not depend on anything it can reach.
local floor, find, sort, concat = math.floor, string.find, table.sort, table.concat
local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local pcall, loadstring, setfenv, setmetatable, rawget = pcall, loadstring, setfenv, setmetatable, rawget

local function is_int(v) return type(v) == "number" and v == floor(v) and v > -2^53 and v < 2^53 end
-- Strings reach C as NUL-terminated: one with a NUL inside would be cut.
local function is_str(v) return type(v) == "string" and not find(v, "\0", 1, true) end

-- How an error shows a value it refuses: a string quoted, a table as "a
-- table"; a secret (api.token, a plugin's secret option) only by its kind,
-- never its bytes, since errors are logged.
local function show(v, secret)
  if type(v) == "string" then
    if not secret or v == "" then return ("%q"):format(v) end
    return find(v, "\0", 1, true) and "a string with a NUL byte" or "a string"
  end
  if type(v) == "table" then return next(v) == nil and "an empty table" or "a table" end
  if secret and v ~= nil then return "a " .. type(v) end
  return tostring(v)
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

-- Keys of t in a stable order, so that errors come in the same order on
-- every run.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

-- Checkers return the (possibly converted) value, or nil and what was
-- expected (and, optionally, how to show the value in the error).
local function int_range(lo, hi)
  return function(v)
    if is_int(v) and v >= lo and v <= hi then return v end
    return nil, ("an integer from %d to %d"):format(lo, hi)
  end
end
local positive = int_range(1, 2^40)
local function str(v) if is_str(v) then return v end return nil, "a string without NUL bytes" end
local function opt_str(v)
  if v == nil or v == false then return false end
  if is_str(v) then return v end
  return nil, "a string without NUL bytes, or nil"
end
local function level(v)
  if v == "debug" or v == "info" or v == "warn" or v == "error" then return v end
  return nil, 'one of "debug", "info", "warn", "error"'
end
local function log_format(v)
  if v == "text" or v == "json" then return v end
  return nil, 'one of "text", "json"'
end
local function mount_path(v)
  if type(v) ~= "string" or not v:match("^/[%w%-%._~/]*$") or v:match("//") then
    return nil, 'a path such as "/socket"'
  end
  if #v > 1 then v = v:gsub("/$", "") end
  if v:match("/websocket$") or v:match("/longpoll$") then
    return nil, 'a mount path without "/websocket" or "/longpoll" (they are appended)'
  end
  return v
end
-- A mount: its path, or { path, websocket = bool, longpoll = bool }. It
-- serves WebSocket at <path>/websocket and LongPoll at <path>/longpoll;
-- LongPoll is off by default on "/push_socket" (PushEx mounts it without).
local function mount(v)
  local t = type(v) == "table" and v or { v }
  local path, want = mount_path(t[1])
  if not path then
    return nil, type(v) == "table" and "a table whose first item is " .. want or want
  end
  for k in pairs(t) do
    if k ~= 1 and k ~= "websocket" and k ~= "longpoll" then
      return nil, ('a mount table with keys 1 (the path), websocket, longpoll (found %s)'):format(tostring(k))
    end
  end
  local ws, lp = t.websocket, t.longpoll
  if ws == nil then ws = true end
  if lp == nil then lp = path ~= "/push_socket" end
  if type(ws) ~= "boolean" or type(lp) ~= "boolean" then
    return nil, "a mount whose websocket and longpoll are true or false"
  end
  if not ws and not lp then return nil, "a mount serving websocket, longpoll or both (both are false)" end
  return { path = path, websocket = ws, longpoll = lp }
end
local function list_of(check, max, may_be_empty)
  return function(v)
    if type(v) ~= "table" then return nil, "a list" end
    local out = {}
    for i, item in ipairs(v) do
      local ok, want = check(item)
      if ok == nil then return nil, ("a list whose item %d is %s"):format(i, want) end
      out[i] = ok
    end
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > #v or k ~= floor(k) then
        return nil, "a list (found key " .. tostring(k) .. ")"
      end
    end
    if #out == 0 and not may_be_empty then return nil, "a non-empty list" end
    if max and #out > max then return nil, ("a list of at most %d items"):format(max) end
    return out
  end
end
local function boolean(v) if type(v) == "boolean" then return v end return nil, "true or false" end
-- A checker whose errors show the value's kind only.
local function secret(check)
  return function(v)
    local ok, want = check(v)
    if ok == nil then return nil, want, show(v, true) end
    return ok
  end
end
-- An allowed Origin: "scheme://host[:port]" exactly, or "*.domain" (any
-- subdomain of domain, any scheme and port).
local function origin(v)
  if type(v) == "string" and #v <= 255 and
     (v:match("^[%a][%w+.-]*://[%w.-]+$") or v:match("^[%a][%w+.-]*://[%w.-]+:%d+$") or
      v:match("^%*%.[%w-]+[%w.-]*$")) then
    return v:lower()
  end
  return nil, 'an origin such as "https://app.example.com" or a pattern such as "*.example.org"'
end
local origins = list_of(origin, 256)
local function opt_origins(v)
  if v == nil or v == false then return false end
  return origins(v)
end
-- A stable node name: letters, digits, '.', '_', '-' (1 to 48 bytes), or nil.
local function node_name(v)
  if v == nil or v == false then return false end
  if type(v) == "string" and #v >= 1 and #v <= 48 and not find(v, "[^%w%._%-]") then return v end
  return nil, "a name of 1 to 48 letters, digits, '.', '_' or '-', or nil"
end

-- listen.trusted_proxies: addresses and ranges ("10.0.0.0/8", "::1"); an
-- empty list trusts none. Each is parsed by M.cidr, which core/config.c
-- sets to hd_cidr_parse (core/addr.c), so that the check and the server
-- read them with one parser.
local function cidr(v)
  if is_str(v) and (not M.cidr or M.cidr(v)) then return v end
  return nil, 'an address or a range such as "10.0.0.0/8"'
end
local cidr_list = list_of(cidr, 256, true)
local function cidrs(v)
  if type(v) ~= "table" then return nil, 'a list of addresses or ranges such as "10.0.0.0/8" (or {})' end
  return cidr_list(v)
end

-- Sections later issues define; accepted as tables and passed through.
M.reserved = {}

-- cluster.redis: one URL or a list of them (one per shard), returned as a
-- list. Here only the shape is checked; normalize then parses each URL with
-- M.redis_url, which core/config.c sets to hd_redis_url_parse (core/util.c)
-- so that the check and the cluster read URLs with one parser. Without it
-- (busted), URLs are not parsed.
local redis_list = list_of(str, 16)
local function redis_urls(v)
  if is_str(v) then return { v } end
  if type(v) == "table" then return redis_list(v) end
  -- The third value is what the error shows instead of v: a URL may hold a password.
  return nil, "a redis:// URL or a non-empty list of them (at most 16)",
    type(v) == "string" and "a string with a NUL byte" or nil
end

-- A topic policy's fields and their checkers: the one definition of what
-- a `topics` rule and a topic hook's result may set (core/script.c loads
-- this module into the scripts' Lua state and checks every topic hook's
-- result with M.topic_policy). history_size's cap is HD_HISTORY_MAX
-- (core/config.h).
local uint32 = int_range(0, 2^32 - 1)
local function one_of(a, b)
  return function(v)
    if v == a or v == b then return v end
    return nil, ("%q or %q"):format(a, b)
  end
end
local policy_fields = {
  tracked = boolean, presence = boolean, throttle_ms = uint32, debounce_ms = uint32,
  max_wait_ms = uint32, max_queue_bytes = uint32, coalesce = one_of("none", "latest"),
  on_overflow = one_of("close", "drop_oldest"),
  history_size = int_range(0, 100000), history_ttl_ms = int_range(1, 2^32 - 1), recover_max = uint32,
}
local policy_names = {}
for k in pairs(policy_fields) do policy_names[#policy_names + 1] = k end
sort(policy_names)

-- t's policy fields checked (t[skip] aside): a copy holding them, or nil
-- and the list of error lines, each naming the field ('history_size:
-- expected an integer from 0 to 100000, got 100001', 'unknown field
-- "trackd" (...)'). Reads t raw and calls no metamethod, neither of t nor
-- of its keys and values: a topic hook's result is the operator's table.
function M.topic_policy(t, skip)
  local out, errs, unknown = {}, {}, {}
  for _, k in ipairs(policy_names) do
    local x = rawget(t, k)
    if x ~= nil then
      local ok, want = policy_fields[k](x)
      if ok == nil then errs[#errs + 1] = ("%s: expected %s, got %s"):format(k, want, show(x)) end
      out[k] = ok
    end
  end
  for k in next, t do
    if k ~= skip and (type(k) ~= "string" or not policy_fields[k]) then unknown[#unknown + 1] = show(k) end
  end
  sort(unknown)
  for _, k in ipairs(unknown) do
    errs[#errs + 1] = ("unknown field %s (the fields are %s)"):format(k, concat(policy_names, ", "))
  end
  if #errs > 0 then return nil, errs end
  return out
end

-- topics = { { match = "public:*", tracked = false }, ... }: first match
-- applies. Errors in the rules come as lines ("[1]: tracked: expected true
-- or false, got 1"), which normalize puts after "topics".
local function topic_rules(v)
  if type(v) ~= "table" then return nil, "a list of rules such as { match = \"public:*\", tracked = false }" end
  local out, errs = {}, {}
  for i, rule in ipairs(v) do
    if type(rule) ~= "table" then
      errs[#errs + 1] = ("[%d]: expected a rule such as { match = \"public:*\", tracked = false }, got %s")
        :format(i, show(rule))
    else
      if not is_str(rule.match) or rule.match == "" then
        errs[#errs + 1] = ("[%d]: match: expected a pattern (a non-empty string; * matches any run of characters), got %s")
          :format(i, show(rule.match))
      end
      local r, lines = M.topic_policy(rule, "match")
      for _, line in ipairs(lines or {}) do errs[#errs + 1] = ("[%d]: %s"):format(i, line) end
      if r then r.match = rule.match end
      out[i] = r
    end
  end
  if #errs > 0 then return nil, errs end
  if #out ~= 0 and next(v, #out) ~= nil or #out == 0 and next(v) ~= nil then return nil, "a list of rules" end
  return out
end

-- scripts.http: herald.http.request's client.
local http_defaults = { pool_size = 16, timeout_ms = 5000, max_in_flight = 10000, max_response_bytes = 1048576 }
local http_checks = { pool_size = int_range(1, 1024), timeout_ms = int_range(1, 600000),
                      max_in_flight = int_range(1, 1000000), max_response_bytes = int_range(1024, 64 * 1048576) }
local function http_options(v)
  if type(v) ~= "table" then return nil, "a table such as { pool_size = 16, timeout_ms = 5000 }" end
  local out = {}
  for k, d in pairs(http_defaults) do out[k] = d end
  for _, k in ipairs(sorted_keys(v)) do
    local check = http_checks[k]
    if not check then
      return nil, "a table of pool_size, timeout_ms, max_in_flight and max_response_bytes (unknown key " .. tostring(k) .. ")"
    end
    local ok, want = check(v[k])
    if ok == nil then return nil, "{ " .. k .. " = " .. want .. " }" end
    out[k] = ok
  end
  return out
end

-- scripts = { "policy.lua", "more.lua", watch = false, budget_ms = 10, memory_mb = 256,
--             io_timeout_ms = 10000, http = { pool_size = 16, ... } }
local script_defaults = { watch = false, budget_ms = 10, memory_mb = 256, io_timeout_ms = 10000 }
local script_checks = { watch = boolean, budget_ms = int_range(1, 60000), memory_mb = int_range(16, 1024),
                        io_timeout_ms = int_range(1, 600000), http = http_options }
local function scripts(v)
  if type(v) ~= "table" then return nil, "a table such as { \"policy.lua\" }" end
  local out = { files = {}, http = http_options({}) }
  for k, d in pairs(script_defaults) do out[k] = d end
  for k, x in pairs(v) do
    if type(k) == "number" then
      if not is_str(x) or x == "" then return nil, ("a list of file names (item %s is not)"):format(tostring(k)) end
    elseif script_checks[k] then
      local ok, want = script_checks[k](x)
      if ok == nil then return nil, k .. " = " .. want end
      out[k] = ok
    else
      return nil, "a list of files plus watch, budget_ms, memory_mb, io_timeout_ms and http (unknown key " .. tostring(k) .. ")"
    end
  end
  for i = 1, #v do out.files[i] = v[i] end
  return out
end

-- plugins: a list, run in list order,
--   plugins = { { "jwt", secret = "..." }, "big_topics", { "rate_limit", messages_per_second = 5 } }
-- (an item is the plugin's name, or a table holding the name first and then
-- its options), or a map, run in name order,
--   plugins = { jwt = { secret = "..." }, big_topics = true }
-- Either way the result is the list { { name = ..., options = { ... } }, ... }
-- in the order the plugins run.
local plugin_forms = '{ { "jwt", secret = "..." }, "big_topics" } (run in list order) or '
  .. '{ jwt = { secret = "..." }, big_topics = true } (run in name order)'
local function plugin_name(k) return type(k) == "string" and k:match("^[%a_][%w_]*$") end
local function plugins(v)
  if type(v) ~= "table" then return nil, "a list of plugins such as " .. plugin_forms end
  local n, named = 0, 0
  for k in pairs(v) do
    n = n + 1
    if type(k) == "string" then named = named + 1 end
  end
  local out = {}
  if n > 0 and named == 0 then
    -- The list form: keys 1..n only.
    if n ~= #v then return nil, "a list of plugins (keys 1 to n only) or a table of name = options", "a table" end
    local seen = {}
    for i, item in ipairs(v) do
      local name, options = item, {}
      if type(item) == "table" then
        name = item[1]
        for k, x in pairs(item) do
          if k ~= 1 then
            if type(k) ~= "string" then
              return nil, ('item %d as { "name", option = value, ... } (found key %s)'):format(i, show(k))
            end
            options[k] = x
          end
        end
      end
      if not plugin_name(name) then
        return nil, ('item %d as a plugin name or { "name", option = value, ... }'):format(i), show(name)
      end
      if seen[name] then
        return nil, "each plugin listed once", ("%q as items %d and %d"):format(name, seen[name], i)
      end
      seen[name] = i
      out[i] = { name = name, options = options }
    end
    return out
  end
  if named ~= n then
    return nil, "either a list of plugins or a table of name = options, not both in one table: " .. plugin_forms,
      "a table with both"
  end
  -- The map form.
  local names = {}
  for k, x in pairs(v) do
    if not plugin_name(k) then
      return nil, "a table keyed by plugin names (found " .. show(k) .. ")"
    end
    if x ~= true and type(x) ~= "table" then
      return nil, ("options for plugin %s as a table (or true)"):format(k)
    end
    names[#names + 1] = k
  end
  sort(names)
  for i, k in ipairs(names) do out[i] = { name = k, options = v[k] == true and {} or v[k] } end
  return out
end

-- ---- plugin options, checked against each plugin's declaration --------------
--
-- plugins/<name>.lua returns { options = { <option> = <spec>, ... },
-- setup = function(options) ... end } (plugins/README.md). A spec is a type
-- name ("string") or a table:
--   type      "string" | "number" | "integer" | "boolean" | "list" | "table"
--   required  true: the option must be given
--   default   the value setup sees when the option is not given
--   one_of    the allowed values
--   min       numbers: the least allowed
--   nonempty  strings and lists: "" and {} are refused
--   items     lists: the spec of every item
--   check     function(value) -> nil, or a sentence saying what is wrong
--   secret    true: errors never show the value
-- M.plugin_source(name), which core/config.c sets, returns the file's text
-- (or nil: no such plugin); without it (busted) options are not checked.

local function is_list(v)
  if type(v) ~= "table" then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  return n == #v
end
local types = {
  string = { "a string", is_str },
  number = { "a number", function(v) return type(v) == "number" and v == v end },
  integer = { "an integer", is_int },
  boolean = { "true or false", function(v) return type(v) == "boolean" end },
  list = { "a list", is_list },
  table = { "a table", function(v) return type(v) == "table" end },
}
-- A spec's fields: the Lua type of each one's value (true: any), and the
-- option types that take it (nil: all).
local spec_fields = { type = "string", required = "boolean", default = true, one_of = "table", min = "number",
                      nonempty = "boolean", items = true, check = "function", secret = "boolean" }
local field_types = { min = { number = true, integer = true }, nonempty = { string = true, list = true },
                      items = { list = true } }

-- The spec as a table, or nil and what is wrong with the declaration.
local function spec_of(spec)
  if type(spec) == "string" then spec = { type = spec } end
  if type(spec) ~= "table" then return nil, "must be a type name or a table { type = ... }" end
  if not types[spec.type] then return nil, "has the unknown type " .. show(spec.type) end
  for k, x in pairs(spec) do
    local kind, only = spec_fields[k], field_types[k]
    if not kind then return nil, "has the unknown field " .. show(k) end
    if kind ~= true and type(x) ~= kind then return nil, ("has %s = %s, not a %s"):format(k, show(x), kind) end
    if only and not only[spec.type] then return nil, ("has %s, which type %s does not take"):format(k, spec.type) end
  end
  if spec.items ~= nil then
    local items, why = spec_of(spec.items)
    if not items then return nil, "items " .. why end
    spec.items = items
  end
  return spec
end

-- What a spec accepts, in words: "a non-empty string", "an integer >= 1".
local function describe(spec)
  if spec.one_of then
    local shown = {}
    for i, x in ipairs(spec.one_of) do shown[i] = show(x) end
    return "one of " .. concat(shown, ", ")
  end
  local want = types[spec.type][1]
  if spec.nonempty then want = "a non-empty " .. spec.type end
  if spec.min then want = want .. " >= " .. tostring(spec.min) end
  if spec.items then want = want .. ", each item " .. describe(spec.items) end
  return want
end

-- What spec accepts, said for the value v it refused.
local function wanted(spec, v)
  local want = describe(spec)
  if type(v) == "string" and find(v, "\0", 1, true) then want = want .. " without NUL bytes" end
  return want
end

-- v checked against spec: v, or nil and the rest of the error line
-- ("expected ..., got ..." or the reason spec.check gave).
local function check_value(spec, v, secret_value)
  local hidden = secret_value or spec.secret
  local ok = types[spec.type][2](v)
    and not (spec.nonempty and (v == "" or spec.type == "list" and #v == 0))
    and not (spec.min and v < spec.min)
  if ok and spec.one_of then
    ok = false
    for _, x in ipairs(spec.one_of) do ok = ok or x == v end
  end
  if not ok then return nil, ("expected %s, got %s"):format(wanted(spec, v), show(v, hidden)) end
  if spec.items then
    for i, x in ipairs(v) do
      local fine, tail = check_value(spec.items, x, hidden)
      if fine == nil then return nil, ("item %d: %s"):format(i, tail) end
    end
  end
  if spec.check then
    local fine, why = pcall(spec.check, v)
    if not fine then return nil, "the plugin's check failed: " .. tostring(why) end
    if why ~= nil then return nil, tostring(why) end
  end
  return v
end

local declare_globals = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, select = select,
  tonumber = tonumber, tostring = tostring, type = type, unpack = unpack, pcall = pcall,
  setmetatable = setmetatable, getmetatable = getmetatable, rawequal = rawequal, rawget = rawget,
  rawset = rawset, string = string, table = table, math = math, bit = bit,
}

-- What plugins/<name>.lua returns, or nil and an error line. Its top level
-- runs here without `herald` (that comes when the scripts load and call
-- setup), so it only declares.
function M.plugin(name)
  local src = M.plugin_source(name)
  if not src then return nil, ("plugins: unknown plugin '%s'"):format(name) end
  local label = "plugins." .. name .. ": "
  local chunk, e = loadstring(src, "@plugins/" .. name .. ".lua")
  if not chunk then return nil, label .. e end
  setfenv(chunk, setmetatable({}, { __index = declare_globals }))
  local ran, p = pcall(chunk)
  if not ran then return nil, label .. tostring(p) end
  if type(p) ~= "table" or type(p.options) ~= "table" or type(p.setup) ~= "function" then
    return nil, ("%splugins/%s.lua must return { options = { ... }, setup = function(options) ... end }")
      :format(label, name)
  end
  return p
end

-- The options given for plugin name, checked against its declaration, with
-- the defaults filled in; or nil and a list of error lines, each naming the
-- plugin and the option (not the file: normalize adds it).
function M.plugin_options(name, given)
  if not M.plugin_source then return given end
  local p, why = M.plugin(name)
  if not p then return nil, { why } end
  local label, specs, errs = "plugins." .. name, {}, {}
  for _, k in ipairs(sorted_keys(p.options)) do
    local spec, bad = spec_of(p.options[k])
    if not spec then
      errs[#errs + 1] = ("%s: plugins/%s.lua: option %s %s"):format(label, name, show(k), bad)
    end
    specs[k] = spec
  end
  if #errs > 0 then return nil, errs end
  local known = sorted_keys(specs)
  for _, k in ipairs(sorted_keys(given)) do
    if not specs[k] then
      errs[#errs + 1] = ('%s: unknown option %s (%s takes %s)')
        :format(label, show(k), name, #known > 0 and concat(known, ", ") or "none")
    end
  end
  local out = {}
  for _, k in ipairs(known) do
    local spec, v = specs[k], given[k]
    if v ~= nil then
      local ok, tail = check_value(spec, v)
      if ok == nil then errs[#errs + 1] = ("%s.%s: %s"):format(label, k, tail) end
      out[k] = ok
    elseif spec.required then
      errs[#errs + 1] = ("%s.%s: expected %s (required), got nil"):format(label, k, describe(spec))
    else
      out[k] = copy(spec.default)
    end
  end
  if #errs > 0 then return nil, errs end
  return out
end


-- section name -> { key -> {default, checker} } ; or a checker for a whole value.
M.schema = {
  listen = {
    host = { "0.0.0.0", str },
    port = { 4000, int_range(0, 65535) },
    reuseport = { false, boolean },
    trusted_proxies = { { "127.0.0.0/8", "::1" }, cidrs },
  },
  -- Absent: no admin listener. Present: one on host:port.
  admin = {
    host = { "127.0.0.1", str },
    port = { 4001, int_range(0, 65535) },
  },
  api = {
    token = { false, secret(opt_str) },
  },
  mounts = { { { path = "/push_socket", websocket = true, longpoll = false },
               { path = "/socket", websocket = true, longpoll = true } }, list_of(mount, 16) },
  ws = {
    allowed_origins = { false, opt_origins },
  },
  limits = {
    max_connections = { 100000, positive },
    max_connections_per_ip = { 1000, int_range(0, 2^40) },
    connect_rate = { 0, int_range(0, 10000000) },
    connect_rate_per_ip = { 0, int_range(0, 10000000) },
    ipv6_prefix = { 64, int_range(32, 128) },
    max_message_bytes = { 65536, int_range(128, 64 * 1024 * 1024) },
    max_inbound_bytes = { 67108864, int_range(1024, 2^40) },
    send_queue_bytes = { 1048576, int_range(1024, 1024 * 1024 * 1024) },
    max_header_bytes = { 16384, int_range(256, 1024 * 1024) },
    max_url_bytes = { 8192, int_range(64, 1024 * 1024) },
    max_body_bytes = { 1048576, int_range(0, 1024 * 1024 * 1024) },
    max_topics_per_socket = { 100, int_range(1, 100000) },
    max_queued_bytes = { 268435456, int_range(1024, 2^40) },
    fanout_backlog = { 1, int_range(0, 1000000) },
    client_messages_per_s = { 100, int_range(0, 1000000) },
    client_messages_burst = { 200, int_range(0, 1000000) },
  },
  timeouts = {
    ws_idle_ms = { 45000, int_range(10, 86400000) },
    http_idle_ms = { 60000, int_range(10, 86400000) },
    http_head_ms = { 10000, int_range(10, 3600000) },
    http_body_ms = { 30000, int_range(10, 3600000) },
    ws_message_ms = { 30000, int_range(10, 3600000) },
    ws_close_ms = { 5000, int_range(10, 600000) },
  },
  log = {
    level = { "info", level },
    format = { "text", log_format },
  },
  reload = {
    recheck_joins = { false, boolean },
  },
  drain = {
    timeout_ms = { 30000, int_range(100, 3600000) },
    announce_ms = { 0, int_range(0, 3600000) },
    http_idle_ms = { 500, int_range(0, 3600000) },
    http_ms = { 5000, int_range(0, 3600000) },
    flush_ms = { 5000, int_range(0, 3600000) },
    disconnect_sockets = { true, boolean },
    disconnect_rate = { 5000, int_range(1, 1000000) },
  },
  presence = {
    batch_ms = { 100, int_range(1, 60000) },
  },
  longpoll = {
    poll_ms = { 10000, int_range(100, 300000) },
    window_ms = { 10000, int_range(100, 3600000) },
    max_batch = { 100, int_range(1, 10000) },
  },
  topics = { {}, topic_rules },
  scripts = { scripts({}), scripts },
  plugins = { {}, plugins },
  -- Absent: a single node (redis = false). Present: redis is required.
  cluster = {
    redis = { false, redis_urls },
    node_timeout_ms = { 30000, int_range(1000, 3600000) },
    heartbeat_ms = { 1500, int_range(100, 600000) },
    required = { false, boolean },
    queue_max = { 10000, int_range(1, 10000000) },
    node = { false, node_name },
  },
}

local order = { "listen", "admin", "api", "mounts", "ws", "limits", "timeouts", "log", "reload", "drain", "presence",
                "longpoll", "topics", "scripts", "plugins", "cluster" }

function M.normalize(settings, source)
  source = source or "config"
  local errs = {}
  local function add(line) errs[#errs + 1] = source .. ": " .. line end
  local function fail(key, want, got) add(("%s: expected %s, got %s"):format(key, want, got)) end
  local out = {}
  for _, name in ipairs(sorted_keys(settings)) do
    if type(name) ~= "string" then
      add("unexpected global " .. tostring(name))
    elseif not M.schema[name] and not M.reserved[name] and type(settings[name]) ~= "function" then
      add(("unknown setting '%s'"):format(name))
    end
  end
  -- A setting that fails is left out of out; what depends on it is not checked.
  for _, name in ipairs(order) do
    local spec, v = M.schema[name], settings[name]
    if type(spec[2]) == "function" then
      -- a single value
      if v == nil then
        out[name] = copy(spec[1])
      else
        local ok, want, shown = spec[2](v)
        if ok == nil and type(want) == "table" then
          for _, line in ipairs(want) do add(name .. line) end
        elseif ok == nil then
          fail(name, want, shown or show(v))
        end
        out[name] = ok
      end
    elseif v ~= nil and type(v) ~= "table" then
      fail(name, "a table", type(v))
    else
      v = v or {}
      local sec = {}
      for _, k in ipairs(sorted_keys(v)) do
        if not spec[k] then add(("unknown setting '%s.%s'"):format(name, tostring(k))) end
      end
      for _, k in ipairs(sorted_keys(spec)) do
        local x = v[k]
        if x == nil then
          sec[k] = spec[k][1]
        else
          local ok, want, shown = spec[k][2](x)
          if ok == nil then fail(name .. "." .. k, want, shown or show(x)) end
          sec[k] = ok
        end
      end
      out[name] = sec
    end
  end
  -- What one key's checker cannot see.
  local lim = out.limits
  if lim and lim.client_messages_per_s and lim.client_messages_burst and
     lim.client_messages_per_s > 0 and lim.client_messages_burst < 1 then
    fail("limits.client_messages_burst", "at least 1 while limits.client_messages_per_s is set", "0")
  end
  local cl, given = out.cluster, settings.cluster
  if cl and given ~= nil then
    if given.redis == nil then
      fail("cluster.redis", "a redis:// URL or a list of them (a cluster needs Redis)", "nil")
    end
    if cl.heartbeat_ms and cl.node_timeout_ms and not (cl.heartbeat_ms * 2 < cl.node_timeout_ms) then
      fail("cluster.heartbeat_ms",
        ("less than half of cluster.node_timeout_ms (%d)"):format(cl.node_timeout_ms), tostring(cl.heartbeat_ms))
    end
    if M.redis_url and cl.redis then
      -- The reason never repeats the URL: it may hold a password.
      local label = type(given.redis) == "string" and "cluster.redis" or "cluster.redis[%d]"
      for i, url in ipairs(cl.redis) do
        local ok, why = M.redis_url(url)
        if not ok then add(("%s: %s"):format(label:format(i), why)) end
      end
    end
  end
  if out.admin then out.admin.on = settings.admin ~= nil end
  for _, p in ipairs(out.plugins or {}) do
    local options, perrs = M.plugin_options(p.name, p.options)
    for _, line in ipairs(perrs or {}) do add(line) end
    p.options = options
  end
  for name in pairs(M.reserved) do
    local v = settings[name]
    if v ~= nil then
      if type(v) ~= "table" then fail(name, "a table", type(v)) end
      out[name] = v
    end
  end
  -- HERALD_PORT overrides listen.port for quick runs.
  local env_port = M.getenv and M.getenv("HERALD_PORT")
  if env_port and env_port ~= "" then
    local p = tonumber(env_port)
    if not p or p ~= floor(p) or p < 0 or p > 65535 then
      errs[#errs + 1] = ("HERALD_PORT: expected an integer from 0 to 65535, got %q"):format(env_port)
    elseif out.listen then
      out.listen.port = p
    end
  end
  if #errs > 0 then return nil, concat(errs, "\n"), errs end
  return out
end

return M
