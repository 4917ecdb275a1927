-- plugins/topic_acl.lua: who may join which topic, by pattern.
--   rules = { { match = "user:{id}", allow = "owner" },
--             { match = "public:*", allow = "all" },
--             { match = "admin:*", allow = { role = "admin" } } },
--   default = "deny"          -- or "allow", or "defer" (let other hooks decide)
-- "*" matches any run of characters; "{id}" matches the socket's identity.
-- The first matching rule decides.
return function(options)
  local rules = options.rules
  if type(rules) ~= "table" then error("plugin topic_acl: option rules must be a list", 0) end
  local default = options.default or "deny"
  if default ~= "deny" and default ~= "allow" and default ~= "defer" then
    error('plugin topic_acl: option default must be "deny", "allow" or "defer"', 0)
  end

  -- Compiles a pattern into a Lua pattern plus whether it captures {id}.
  local function compile(p, i)
    if type(p) ~= "string" or p == "" then error(("plugin topic_acl: rule %d needs match"):format(i), 0) end
    local has_id = false
    local lua = p:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0")
    lua = lua:gsub("%*", ".*")
    lua = lua:gsub("{id}", function() has_id = true; return "(.+)" end)
    return "^" .. lua .. "$", has_id
  end

  local compiled = {}
  for i, r in ipairs(rules) do
    if type(r) ~= "table" then error(("plugin topic_acl: rule %d must be a table"):format(i), 0) end
    local allow = r.allow
    if not (allow == "all" or allow == "owner" or allow == "none" or type(allow) == "table") then
      error(('plugin topic_acl: rule %d: allow must be "all", "owner", "none" or a table of assigns'):format(i), 0)
    end
    local pat, has_id = compile(r.match, i)
    if allow == "owner" and not has_id then
      error(("plugin topic_acl: rule %d: allow = \"owner\" needs {id} in match"):format(i), 0)
    end
    compiled[i] = { pat = pat, allow = allow }
  end

  local function permitted(rule, socket, captured)
    local a = rule.allow
    if a == "all" then return true end
    if a == "none" then return false end
    if a == "owner" then return captured == socket.id end
    for k, v in pairs(a) do
      if socket.assigns[k] ~= v then return false end
    end
    if captured and captured ~= socket.id then return false end
    return true
  end

  local M = {}
  function M.join(socket, topic)
    for _, rule in ipairs(compiled) do
      local found, _, captured = topic:find(rule.pat)
      if found then
        if permitted(rule, socket, captured) then return true end
        return false, "unauthorized"
      end
    end
    if default == "allow" then return true end
    if default == "deny" then return false, "unauthorized" end
  end
  return M
end
