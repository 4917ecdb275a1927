-- plugins/rate_limit.lua: joins and client messages per socket per second.
--   joins_per_second = 10, messages_per_second = 50
-- Counted per socket in the current one-second window; one timer resets
-- every window (no per-socket timers; memory bounded by the sockets active
-- in the window). Over the limit the join or message is refused with
-- "rate limited"; otherwise the plugin has no opinion.
return function(options)
  local joins = options.joins_per_second or 10
  local messages = options.messages_per_second or 50
  for k, v in pairs({ joins_per_second = joins, messages_per_second = messages }) do
    if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then
      error(("plugin rate_limit: option %s must be a positive integer"):format(k), 0)
    end
  end
  local join_counts, message_counts = {}, {}
  herald.every(1000, function()
    join_counts, message_counts = {}, {}
  end)
  local function over(counts, socket, limit)
    local n = (counts[socket.conn_id] or 0) + 1
    counts[socket.conn_id] = n
    return n > limit
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
