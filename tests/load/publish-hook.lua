-- A publish hook for benchmarks: touches the message and passes it on.
-- BENCH_HERALD_SCRIPT=tests/load/publish-hook.lua scripts/bench.sh fanout
return {
  publish = function(msg)
    msg.data.hooked = true
    return msg
  end,
}
