local base = tonumber(os.getenv('NOPE') or '4000')
local function mount(n) return '/' .. n:rep(2) end
listen = { port = base + math.floor(1.5) }
mounts = {}
for i, n in ipairs({ 'a', 'b' }) do mounts[#mounts + 1] = mount(n) end
table.sort(mounts)
assert(type(os.time()) == 'number', 'time')
function helper() return string.format('%d', 1) end
