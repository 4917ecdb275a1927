#!/usr/bin/env bash
# make bench: measures herald with tests/load/herald-bench and prints each
# result as one JSON line, then a summary table.
#
#   scripts/bench.sh [SCENARIO...]     default: idle idle-longpoll fanout fanout-v1half fanout-paced fanout-burst many-topics connect api
#
# idle-longpoll is two runs against fresh heralds with the same config
# (longpoll.poll_ms = 120000): BENCH_LP_CLIENTS (10,000) idle WebSockets
# (shown as idle-longpoll-ws), then as many idle LongPoll sessions, each
# holding a poll, each joined to its own topic as in idle: bytes of herald's
# RSS per session next to bytes per WebSocket.
#
# fanout-v1half is fanout with every other subscriber on Phoenix's V1
# serializer (herald-bench -V 50): herald encodes each message twice, the V2
# frame and, at the first V1 subscriber, its V1 copy.
# fanout-history (fanout on a topic keeping a history of 1,000 messages) is
# known but not in the default list: make bench-history runs it next to fanout.
# fanout-longpoll (fanout's 10,000 subscribers as Phoenix LongPoll sessions,
# herald-bench --longpoll: each holds a poll, re-sent whenever answered, and an
# answer carries every message queued meanwhile) is known but not in the
# default list: make bench-longpoll runs it next to fanout.
# recovery-storm (10,000 clients of a topic with history drop at once, miss 10
# messages, rejoin at once with since) is known but not in the default list:
# make bench-recovery runs it.
# cluster-fanout (one node against two joined by Redis) is known but not in
# the default list: scripts/cluster-bench.sh runs it (after the others), with
# a redis-server of its own; make bench-cluster runs it alone.
#
# Environment:
#   BENCH_RUNS=N     repeat every scenario N times (default 1); the table shows medians
#   BENCH_ARGS=...   extra herald-bench flags for every run (e.g. "-n 2000 -v")
#   BUILD=DIR        build directory (default build); built here when needed
#   BENCH_OUT=FILE   where the JSON lines go (default $BUILD/bench/results-<time>.jsonl)
#
# Each scenario runs against a freshly started herald (loopback, ephemeral
# port, a generated config), which is stopped by its PID afterwards.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
RUNS=${BENCH_RUNS:-1}
BENCH_ARGS=${BENCH_ARGS:-}
ALL=(idle idle-longpoll fanout fanout-v1half fanout-paced fanout-burst many-topics connect api)
EXTRA=(cluster-fanout fanout-history fanout-longpoll recovery-storm idle-longpoll-ws) # known, not run by default

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=("${ALL[@]}")
cluster=
for s in "${scenarios[@]}"; do
  case " ${ALL[*]} ${EXTRA[*]} " in *" $s "*) ;; *) echo "bench: unknown scenario '$s' (known: ${ALL[*]} ${EXTRA[*]})" >&2; exit 2 ;; esac
  [ "$s" = cluster-fanout ] && cluster=1
done
case $RUNS in '' | *[!0-9]* | 0) echo "bench: BENCH_RUNS must be a positive number" >&2; exit 2 ;; esac

# shellcheck source=../tests/load/bench-lib.sh
. "$ROOT/tests/load/bench-lib.sh"

hb_build || { echo "bench: build failed" >&2; exit 1; }

hb_outputs bench results
cleanup() { hb_stop_server; rm -rf "$HB_TMP"; }
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

echo "herald bench: ${scenarios[*]} (runs: $RUNS); results in $OUT" >&2
for ((run = 1; run <= RUNS; run++)); do
  for s in "${scenarios[@]}"; do
    [ "$s" = cluster-fanout ] && continue
    echo "-- $s (run $run/$RUNS)" >&2
    # idle-longpoll: its WebSocket baseline first, at the same N and config
    [ "$s" = idle-longpoll ] && hb_run idle-longpoll-ws herald "$OUT"
    hb_run "$s" herald "$OUT"
  done
done
# its own runs (BENCH_RUNS of each variant), its lines added to $OUT, its own table
[ -n "$cluster" ] && BUILD=$BUILD BENCH_OUT=$OUT bash "$ROOT/scripts/cluster-bench.sh"

echo
if command -v python3 >/dev/null 2>&1; then
  [ "$RUNS" -gt 1 ] && echo "medians of $RUNS runs:"
  python3 "$ROOT/tests/load/bench-summary.py" "$OUT"
else
  echo "(python3 not found: no summary table; the JSON lines are above and in $OUT)"
fi
