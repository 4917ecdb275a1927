-- examples/convention/convention.lua: the convention's votes, tallied here.
--
-- Topics (their policies are the config's `topics` rules, herald.lua):
--   convention:main  every participant; the open question goes out here.
--                    Untracked: no presence entry per join (3,000 of them).
--   tallies          the running counts. Published on every vote, but the
--                    topic is debounced with coalesce = "latest": herald
--                    sends the newest counts once the votes pause (and at
--                    least every max_wait_ms), not one frame per vote per
--                    subscriber.
--   hall             who is in the room: every participant joins it, and
--                    herald tracks them (GET /api/presence/hall), but the
--                    topic sends no presence events: 3,000 participants
--                    each receiving the list of all the others is what took
--                    the server down (presence_state alone would be ~1 GB).
--   hall:admin       the list for admins only: this script mirrors the
--                    hall's joins and leaves and sends them here as one
--                    presence_diff every BATCH_MS at most (the admin page
--                    applies them with phoenix.js Presence.syncDiff; the
--                    join reply carries the state for Presence.syncState).
--
-- Identity comes from the jwt plugin: claims sub (the socket's id), name and
-- role ("participant" or "admin") are the socket's assigns.
--
-- A question is opened by an HTTP publish to convention:main (this script's
-- publish hook sees it first) or by an admin's "open" push on that topic:
--   curl -X POST localhost:4000/api/push -H 'content-type: application/json' \
--     -d '{"channel":"convention:main","event":"question",
--          "data":{"text":"Adopt the motion?","options":["yes","no","abstain"]}}'
-- A participant votes with a push on convention:main:
--   channel.push("vote", { question: 1, option: "yes" })  -> ok {counted: true}
-- A second vote on the same question replaces the first.
local M = {}

local MAX_OPTIONS = 10
local BATCH_MS = 500
local TOPICS = { ["convention:main"] = true, tallies = true, hall = true, ["hall:admin"] = true }

local question     -- { id =, text =, options = {...} } or nil before the first
local counts = {}  -- counts[i]: ballots for question.options[i]
local ballots = {} -- ballots[participant id] = option index, for this question
local votes = 0    -- ballots cast on this question
local last_id = 0

-- The hall as phoenix.js Presence sees it: hall[id][conn_id] = meta, each
-- meta with a phx_ref of its own ("c<conn_id>"), so that a user on two
-- devices is one key with two metas and a leave removes the right one.
local hall = {}
local rejoining = {} -- conn ids whose hall channel is being replaced by a rejoin
local pending -- the diff not sent yet: { joins = {key = {metas}}, leaves = {...} }

local function hall_state()
  local state = {}
  for id, conns in pairs(hall) do
    local metas = {}
    for _, meta in pairs(conns) do metas[#metas + 1] = meta end
    state[id] = { metas = metas }
  end
  return state
end

-- Records a join or leave ("joins" or "leaves") of key with meta in the
-- pending diff; the first change of a window arms its flush.
local function hall_changed(kind, key, meta)
  if not pending then
    pending = { joins = {}, leaves = {} }
    herald.after(BATCH_MS, function()
      local diff = pending
      pending = nil
      herald.publish("hall:admin", "presence_diff", diff)
    end)
  end
  local e = pending[kind][key]
  if not e then
    e = { metas = {} }
    pending[kind][key] = e
  end
  e.metas[#e.metas + 1] = meta
end

local function snapshot()
  if not question then return { question = herald.json.null, counts = {}, votes = 0 } end
  local c = {}
  for i = 1, #question.options do c[i] = counts[i] end
  return { question = question.id, options = question.options, counts = c, votes = votes }
end

-- A question from an admin push or an HTTP publish: a table with a
-- non-empty text and 2..MAX_OPTIONS distinct non-empty option strings. Returns
-- the question as published, or nil and why not.
local function open(data)
  if type(data) ~= "table" or type(data.text) ~= "string" or data.text == "" then
    return nil, "a question needs a text"
  end
  local opts, seen = {}, {}
  if type(data.options) ~= "table" then return nil, "a question needs options" end
  for _, o in ipairs(data.options) do
    if type(o) ~= "string" or o == "" or seen[o] then return nil, "options must be distinct strings" end
    seen[o] = true
    opts[#opts + 1] = o
  end
  if #opts < 2 or #opts > MAX_OPTIONS then return nil, "a question has 2 to " .. MAX_OPTIONS .. " options" end
  last_id = last_id + 1
  question = { id = last_id, text = data.text, options = opts }
  counts, ballots, votes = {}, {}, 0
  for i = 1, #opts do counts[i] = 0 end
  herald.log("info", "question", question.id, "opened:", question.text)
  herald.publish("tallies", "tallies", snapshot())
  return question
end

function M.join(socket, topic, payload)
  if not TOPICS[topic] then return false, "unknown topic" end
  local a = socket.assigns
  if topic == "hall" then
    local meta = { name = tostring(a.name or socket.id), role = a.role == "admin" and "admin" or "participant" }
    local conns = hall[socket.id] or {}
    hall[socket.id] = conns
    if conns[socket.conn_id] then
      -- A second join of hall on this socket: herald closes the first
      -- channel right after this hook (its leave), and the entry stays.
      rejoining[socket.conn_id] = true
    else
      local mirrored = { name = meta.name, role = meta.role, phx_ref = "c" .. socket.conn_id }
      conns[socket.conn_id] = mirrored
      hall_changed("joins", socket.id, mirrored)
    end
    return true, { meta = meta }
  end
  if topic == "hall:admin" then
    if a.role ~= "admin" then return false, "admins only" end
    return true, { reply = { presence = hall_state() } }
  end
  if topic == "tallies" then return true, { reply = snapshot() } end
  return true, { reply = { question = question or herald.json.null } }
end

-- An HTTP publish of "question" to convention:main opens it; the message
-- then goes out as the question (with its id). Other publishes pass.
function M.publish(msg)
  if msg.topic ~= "convention:main" or msg.event ~= "question" then return msg end
  local q, err = open(msg.data)
  if not q then
    herald.log("warn", "question not opened:", err)
    return false
  end
  msg.data = q
  return msg
end

function M.message(socket, topic, event, payload)
  if topic ~= "convention:main" then return false, "unknown event" end
  if type(payload) ~= "table" then payload = {} end
  if event == "vote" then
    if not question or payload.question ~= question.id then return false, "question closed" end
    local choice
    for i, o in ipairs(question.options) do if o == payload.option then choice = i end end
    if not choice then return false, "no such option" end
    local before = ballots[socket.id]
    if before then counts[before] = counts[before] - 1 else votes = votes + 1 end
    ballots[socket.id] = choice
    counts[choice] = counts[choice] + 1
    -- One publish per vote; the tallies policy decides how many frames that makes.
    herald.publish("tallies", "tallies", snapshot())
    return { counted = true, question = question.id, option = payload.option }
  end
  if event == "open" then
    if socket.assigns.role ~= "admin" then return false, "admins only" end
    local q, err = open(payload)
    if not q then return false, err end
    herald.publish("convention:main", "question", q)
    return { question = q.id }
  end
  return false, "unknown event"
end

function M.leave(socket, topic)
  if topic ~= "hall" then return end
  if rejoining[socket.conn_id] then
    rejoining[socket.conn_id] = nil
    return
  end
  local conns = hall[socket.id]
  local meta = conns and conns[socket.conn_id]
  if not meta then return end
  conns[socket.conn_id] = nil
  if next(conns) == nil then hall[socket.id] = nil end
  hall_changed("leaves", socket.id, meta)
end

return M
