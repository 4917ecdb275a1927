-- plugins/topic_acl.lua: who may join which topic, by pattern.
--   rules = { { match = "user:{id}", allow = "owner" },
--             { match = "public:*", allow = "all" },
--             { match = "admin:*", allow = { role = "admin" } } },
--   default = "deny"          -- or "allow", or "defer" (let other hooks decide)
-- "*" matches any run of characters (possibly empty), as in herald.glob;
-- "{id}" matches any non-empty run, and admits only the socket whose
-- identity it is, taken literally (rules "owner" and assigns tables). The
-- first matching rule decides; refusals answer "unauthorized".

-- What is wrong with the rules, or nil. Runs when the config is checked
-- (herald check, start-up), so that setup may take the rules as valid.
local function bad_rules(rules)
  for i, r in ipairs(rules) do
    local allow, match = r.allow, r.match
    if type(allow) == "table" then
      local n = 0
      for k, v in pairs(allow) do
        n = n + 1
        local t = type(v)
        if type(k) ~= "string" or (t ~= "string" and t ~= "number" and t ~= "boolean") then
          return ("rule %d: an allow table maps assign names to strings, numbers or booleans"):format(i)
        end
      end
      if n == 0 then return ("rule %d: an allow table must name at least one assign"):format(i) end
    elseif allow ~= "all" and allow ~= "owner" and allow ~= "none" then
      return ('rule %d: allow must be "all", "owner", "none" or a table of assigns'):format(i)
    end
    if type(match) ~= "string" or match == "" then return ("rule %d: match must be a non-empty string"):format(i) end
    if match:find("\0", 1, true) then return ("rule %d: match must not contain a NUL byte"):format(i) end
    if allow == "owner" and not match:find("{id}", 1, true) then
      return ('rule %d: allow = "owner" needs {id} in match'):format(i)
    end
  end
end

local plugin = {
  options = {
    rules = { type = "list", required = true, items = "table", check = bad_rules },
    default = { type = "string", one_of = { "deny", "allow", "defer" }, default = "deny" },
  },
}

function plugin.setup(options)
  local glob = herald.glob
  local rules, default = options.rules, options.default

  -- Does topic split as parts[1] S parts[2] S ... S parts[#parts], each
  -- part matching as a glob, where every S is fill taken literally ("*"
  -- included: an identity is not a pattern) or, when fill is nil, one byte
  -- (compile makes {id}, a non-empty run, one byte and a "*" that starts
  -- the next part)?
  local function fits(parts, topic, fill)
    -- One glob first, with fill spelled into the pattern when it holds
    -- neither "*" nor NUL (then this is the answer), else "*" for each S
    -- (then it matches whenever fits does).
    local plain = fill and not fill:find("*", 1, true) and not fill:find("\0", 1, true)
    if not glob(table.concat(parts, plain and fill or "*"), topic) then return false end
    if plain or #parts == 1 then return true end
    local n = #topic
    local function from(i, pos) -- parts[i] starts at pos
      local p = parts[i]
      if i == #parts then return glob(p, topic:sub(pos)) end
      local exact = not p:find("*", 1, true) and pos + #p -- a literal part: S right after it
      local s = exact or pos
      while true do
        if fill then s = topic:find(fill, s, true) elseif s > n then s = nil end
        if not s or (exact and s ~= exact) then return false end
        if glob(p, topic:sub(pos, s - 1)) then
          -- Without fill the next part starts with "*" and so fits from s + 1
          -- if it fits from anywhere later: the first s is the one to try.
          if not fill then return from(i + 1, s + 1) end
          if from(i + 1, s + #fill) then return true end
        end
        s = s + 1
      end
    end
    return from(1, 1)
  end

  -- A rule's pattern as glob parts around its {id}s: `owner` for "is this
  -- socket the one the topic names?" (fits with the identity as fill),
  -- `any` for "does the rule match at all?" ({id} as one byte and then a
  -- "*" run: fits without fill).
  local function compile(p)
    local owner = {}
    for piece in (p .. "{id}"):gmatch("(.-){id}") do owner[#owner + 1] = piece end
    local has_id = #owner > 1
    local any = { owner[1] }
    for k = 2, #owner do any[k] = "*" .. owner[k] end
    return any, has_id and owner or nil
  end

  local compiled = {}
  for i, r in ipairs(rules) do
    local any, owner = compile(r.match)
    compiled[i] = { any = any, owner = owner, allow = r.allow }
  end

  local function permitted(rule, socket, topic)
    local a = rule.allow
    if a == "all" then return true end
    if a == "none" then return false end
    if rule.owner and not fits(rule.owner, topic, tostring(socket.id)) then return false end
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
      if fits(rule.any, topic) then
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

return plugin
