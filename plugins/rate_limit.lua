-- plugins/rate_limit.lua: joins and client messages per socket per second.
--   rate_limit = { joins_per_second = 10, messages_per_second = 50 }
-- Counted per socket (conn_id) in the current one-second window; a single
-- herald.every(1000) timer starts a new window for everyone (no per-socket
-- timers; memory is bounded by the sockets active in one window). Over the
-- limit a join or a message is refused with "rate limited"; otherwise the
-- plugin has no opinion and the other hooks decide.
local plugin = {
  options = {
    joins_per_second = { type = "integer", min = 1, default = 10 },
    messages_per_second = { type = "integer", min = 1, default = 50 },
  },
}

function plugin.setup(options)
  local joins, messages = options.joins_per_second, options.messages_per_second
  local join_counts, message_counts = {}, {}
  herald.every(1000, function()
    join_counts, message_counts = {}, {}
  end)

  -- Counts one more for the socket; true when that is over the limit.
  local function over(counts, socket, max)
    local key = socket.conn_id
    local n = (counts[key] or 0) + 1
    counts[key] = n
    return n > max
  end

  local M = {}
  function M.join(socket)
    if over(join_counts, socket, joins) then return false, "rate limited" end
  end
  function M.message(socket)
    if over(message_counts, socket, messages) then return false, "rate limited" end
  end
  return M
end

return plugin
