-- plugins/topic_acl.lua: who may join which topic, by pattern.
--   rules = { { match = "user:{id}", allow = "owner" },
--             { match = "public:*", allow = "all" },
--             { match = "admin:*", allow = { role = "admin" } } },
--   default = "deny"          -- or "allow", or "defer" (let other hooks decide)
-- "*" matches any run of characters (possibly empty); "{id}" matches any
-- non-empty run, and admits only the socket whose identity it is (rules
-- "owner" and assigns tables). The first matching rule decides; refusals
-- answer "unauthorized".
return function(options)
  local function fail(fmt, ...) error("plugin topic_acl: " .. fmt:format(...), 0) end

  local rules = options.rules
  if type(rules) ~= "table" then fail("option rules must be a list of { match = ..., allow = ... }") end
  local nrules = 0
  for _ in pairs(rules) do nrules = nrules + 1 end
  if nrules ~= #rules then fail("option rules must be a list (found a non-numeric key)") end
  local default = options.default == nil and "deny" or options.default
  if default ~= "deny" and default ~= "allow" and default ~= "defer" then
    fail('option default must be "deny", "allow" or "defer"')
  end

  -- Escapes Lua pattern magic; "*" and "{id}" are dealt with after.
  local function escape(s) return (s:gsub("[%^%$%(%)%%%.%[%]%+%-%?%*]", "%%%0")) end

  -- A rule's pattern with {id} standing for any non-empty run (does the
  -- rule match at all?) and, if it has {id}, a function making the pattern
  -- for one identity (is this socket the one the topic names?).
  local function compile(p, i)
    if type(p) ~= "string" or p == "" then fail("rule %d: match must be a non-empty string", i) end
    local parts = {}
    for piece in (p .. "{id}"):gmatch("(.-){id}") do
      parts[#parts + 1] = escape(piece):gsub("%%%*", ".*")
    end
    local any = "^" .. table.concat(parts, "(.+)") .. "$"
    if #parts == 1 then return any, nil end
    return any, function(id) return "^" .. table.concat(parts, escape(id)) .. "$" end
  end

  local compiled = {}
  for i, r in ipairs(rules) do
    if type(r) ~= "table" then fail("rule %d must be a table { match = ..., allow = ... }", i) end
    local allow = r.allow
    if type(allow) == "table" then
      local n = 0
      for k, v in pairs(allow) do
        n = n + 1
        local t = type(v)
        if type(k) ~= "string" or (t ~= "string" and t ~= "number" and t ~= "boolean") then
          fail("rule %d: an allow table maps assign names to strings, numbers or booleans", i)
        end
      end
      if n == 0 then fail("rule %d: an allow table must name at least one assign", i) end
    elseif allow ~= "all" and allow ~= "owner" and allow ~= "none" then
      fail('rule %d: allow must be "all", "owner", "none" or a table of assigns', i)
    end
    local any, owner = compile(r.match, i)
    if allow == "owner" and not owner then fail('rule %d: allow = "owner" needs {id} in match', i) end
    compiled[i] = { any = any, owner = owner, allow = allow }
  end

  local function permitted(rule, socket, topic)
    local a = rule.allow
    if a == "all" then return true end
    if a == "none" then return false end
    if rule.owner and not topic:find(rule.owner(tostring(socket.id))) then return false end
    if a == "owner" then return true end
    local assigns = socket.assigns or {}
    for k, v in pairs(a) do
      if assigns[k] ~= v then return false end
    end
    return true
  end

  local M = {}
  function M.join(socket, topic)
    for _, rule in ipairs(compiled) do
      if topic:find(rule.any) then
        if permitted(rule, socket, topic) then return true end
        return false, "unauthorized"
      end
    end
    if default == "allow" then return true end
    if default == "deny" then return false, "unauthorized" end
    -- "defer": no opinion
  end
  return M
end
