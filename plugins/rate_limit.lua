-- plugins/rate_limit.lua: joins and client messages per socket per second.
--   rate_limit = { joins_per_second = 10, messages_per_second = 50 }
-- Counted per socket (conn_id) in its current one-second window (whole
-- seconds of herald.monotonic_ms()). A socket's counts are forgotten when it
-- disconnects (the disconnect hook), so memory is bounded by the connected
-- sockets that joined or pushed, with no timer. Over the limit a join or a
-- message is refused with "rate limited"; otherwise the plugin has no
-- opinion and the other hooks decide.
local plugin = {
  options = {
    joins_per_second = { type = "integer", min = 1, default = 10 },
    messages_per_second = { type = "integer", min = 1, default = 50 },
  },
}

function plugin.setup(options)
  local limits = { joins = options.joins_per_second, messages = options.messages_per_second }
  local sockets = {} -- conn_id -> { window = second, joins = n, messages = n }

  -- Counts one more of kind for the socket; true when that is over the limit.
  local function over(socket, kind)
    local window = math.floor(herald.monotonic_ms() / 1000)
    local s = sockets[socket.conn_id]
    if not s or s.window ~= window then
      s = { window = window, joins = 0, messages = 0 }
      sockets[socket.conn_id] = s
    end
    s[kind] = s[kind] + 1
    return s[kind] > limits[kind]
  end

  local M = {}
  function M.join(socket)
    if over(socket, "joins") then return false, "rate limited" end
  end
  function M.message(socket)
    if over(socket, "messages") then return false, "rate limited" end
  end
  function M.disconnect(socket)
    sockets[socket.conn_id] = nil
  end
  return M
end

return plugin
