-- Every topic untracked: the big-topic case (no presence entries).
-- BENCH_HERALD_SCRIPT=tests/load/untracked.lua BENCH_ARGS="-n 10000 --topics one" scripts/bench.sh idle
return { topic = function(name) return { tracked = false } end }
