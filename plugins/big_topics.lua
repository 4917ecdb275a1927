-- plugins/big_topics.lua: huge public topics cost nothing to track.
--   patterns = { "public:*", "news" }  -> { tracked = false } for matches
return function(options)
  local patterns = options.patterns
  if type(patterns) ~= "table" or #patterns == 0 then
    error("plugin big_topics: option patterns must be a non-empty list", 0)
  end
  local compiled = {}
  for i, p in ipairs(patterns) do
    if type(p) ~= "string" or p == "" then
      error(("plugin big_topics: pattern %d must be a non-empty string"):format(i), 0)
    end
    compiled[i] = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*") .. "$"
  end
  local M = {}
  function M.topic(name)
    for _, pat in ipairs(compiled) do
      if name:find(pat) then return { tracked = false } end
    end
  end
  return M
end
