-- plugins/big_topics.lua: huge public topics cost nothing to track.
--   big_topics = { patterns = { "public:*", "news" } }
-- topic(name) returns { tracked = false } for a name matching any pattern
-- (herald.glob: "*" matches any run of characters, the rest is literal),
-- and no opinion otherwise.
return function(options)
  local glob = herald.glob
  local patterns = options.patterns
  if type(patterns) ~= "table" or #patterns == 0 then
    error("plugin big_topics: option patterns must be a non-empty list of patterns", 0)
  end
  local n = 0
  for _ in pairs(patterns) do n = n + 1 end
  if n ~= #patterns then error("plugin big_topics: option patterns must be a list", 0) end
  local compiled = {}
  for i, p in ipairs(patterns) do
    if type(p) ~= "string" or p == "" then
      error(("plugin big_topics: option patterns: entry %d must be a non-empty string"):format(i), 0)
    end
    if p:find("\0", 1, true) then
      error(("plugin big_topics: option patterns: entry %d must not contain a NUL byte"):format(i), 0)
    end
    compiled[i] = p
  end
  local M = {}
  function M.topic(name)
    for _, pat in ipairs(compiled) do
      if glob(pat, name) then return { tracked = false } end
    end
  end
  return M
end
