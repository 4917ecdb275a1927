listen = { port = "x" }
scripts = { "a.lua", watch = true }
plugins = { jwt = { secret = "s" } }
