-- A config that loads examples/policy.lua:  herald -c examples/policy-config.lua
listen = { host = "127.0.0.1", port = 4000 }
scripts = { "policy.lua" }
