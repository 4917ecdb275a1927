listen = { port = 'x' }
limits = { foo = 1 }
