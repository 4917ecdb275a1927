#!/usr/bin/env bash
# make bench-compare: the herald-bench scenarios against herald, nchan (nginx
# with Debian's nchan module) and a minimal Node.js ws broadcast server
# (tests/load/node-ws-server.js), alternating servers within each scenario,
# then herald's figures beside its peers' with the ratios herald/peer.
#
#   scripts/bench-compare.sh [SCENARIO...]   default: all seven scenarios
#
# Environment:
#   BENCH_RUNS=N       repeat the whole alternation N times (default 1); medians
#   BENCH_SERVERS=...  which servers (default "herald nchan node")
#   BENCH_ARGS=...     extra herald-bench flags for every run
#   BUILD=DIR, BENCH_OUT=FILE   as for scripts/bench.sh
#
# Installs what is missing: nginx-light and libnginx-mod-nchan with apt-get,
# and ws with npm when it does not resolve from tests/node_modules.  nginx runs
# in the foreground with a generated config in a temporary directory: one
# worker, 127.0.0.1 only, worker_rlimit_nofile 20000.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
RUNS=${BENCH_RUNS:-1}
BENCH_ARGS=${BENCH_ARGS:-}
ALL=(idle fanout fanout-paced fanout-burst many-topics connect api)
read -r -a servers <<<"${BENCH_SERVERS:-herald nchan node}"

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=("${ALL[@]}")
for s in "${scenarios[@]}"; do
  case " ${ALL[*]} " in *" $s "*) ;; *) echo "bench-compare: unknown scenario '$s' (known: ${ALL[*]})" >&2; exit 2 ;; esac
done
for s in "${servers[@]}"; do
  case $s in herald | nchan | node) ;; *) echo "bench-compare: unknown server '$s'" >&2; exit 2 ;; esac
done
case $RUNS in '' | *[!0-9]* | 0) echo "bench-compare: BENCH_RUNS must be a positive number" >&2; exit 2 ;; esac

# shellcheck source=../tests/load/bench-lib.sh
. "$ROOT/tests/load/bench-lib.sh"

hb_build || { echo "bench-compare: build failed" >&2; exit 1; }
avail=()
for s in "${servers[@]}"; do
  case $s in
    nchan) hb_ensure_nchan && avail+=(nchan) || echo "bench-compare: nchan unavailable: skipped" >&2 ;;
    node) hb_ensure_node && avail+=(node) || echo "bench-compare: the node server unavailable: skipped" >&2 ;;
    *) avail+=("$s") ;;
  esac
done

hb_outputs bench compare
cleanup() { hb_stop_server; rm -rf "$HB_TMP"; }
trap cleanup EXIT
trap 'echo "bench-compare: interrupted" >&2; exit 130' INT TERM

echo "bench-compare: ${scenarios[*]} on ${avail[*]} (runs: $RUNS); results in $OUT" >&2
for ((run = 1; run <= RUNS; run++)); do
  for s in "${scenarios[@]}"; do
    for srv in "${avail[@]}"; do
      echo "-- $s on $srv (run $run/$RUNS)" >&2
      hb_run "$s" "$srv" "$OUT"
    done
  done
done

echo
if command -v python3 >/dev/null 2>&1; then
  [ "$RUNS" -gt 1 ] && echo "medians of $RUNS runs:"
  python3 "$ROOT/tests/load/bench-summary.py" "$OUT"
  python3 "$ROOT/tests/load/bench-summary.py" --compare "$OUT"
else
  echo "(python3 not found: no tables; the JSON lines are above and in $OUT)"
fi
