-- plugins/big_topics.lua: huge public topics cost nothing to track.
--   big_topics = { patterns = { "public:*", "news" } }
-- topic(name) returns { tracked = false } for a name matching any pattern
-- (herald.glob: "*" matches any run of characters, the rest is literal),
-- and no opinion otherwise.
local plugin = {
  options = {
    patterns = { type = "list", required = true, nonempty = true, items = { type = "string", nonempty = true } },
  },
}

function plugin.setup(options)
  local glob, patterns = herald.glob, options.patterns
  local M = {}
  function M.topic(name)
    for _, pat in ipairs(patterns) do
      if glob(pat, name) then return { tracked = false } end
    end
  end
  return M
end

return plugin
