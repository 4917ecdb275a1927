#!/usr/bin/env bash
# make bench-webhook: the connect + join rate (herald-bench's `connect`
# scenario: connect, upgrade, phx_join of its own topic per client) with the
# webhook_auth plugin asking a local Node backend at every connect and every
# join (connect_url and join_url; the backend answers {"allow": true} at
# once), next to the same without the plugin. Prints one JSON line per run,
# then both figures and their ratio. Benchmarks assert nothing.
#
# Environment:
#   BENCH_RUNS=N             runs of each variant, alternating (default 1)
#   BENCH_WEBHOOK_CLIENTS=N  clients per run (default 5000)
#   BENCH_WEBHOOK_POOL=N     scripts.http.pool_size (default 64)
#   BENCH_ARGS=...           extra herald-bench flags
#   BUILD=DIR                build directory (default build); built here when needed
#   BENCH_OUT=FILE           where the JSON lines go (default $BUILD/bench/webhook-<time>.jsonl)
#
# Everything is on 127.0.0.1 with ephemeral ports; each herald and the
# backend are started here and stopped by their PIDs; every wait is bounded.
# The backend (tests/integration/lib/backend.js, one Node process) shares the
# machine's cores with herald and herald-bench: the webhook figure is that of
# the whole loop, backend included.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
RUNS=${BENCH_RUNS:-1}
CLIENTS=${BENCH_WEBHOOK_CLIENTS:-5000}
POOL=${BENCH_WEBHOOK_POOL:-64}
BENCH_ARGS=${BENCH_ARGS:-}
for v in RUNS CLIENTS POOL; do
  case ${!v} in '' | *[!0-9]* | 0) echo "bench-webhook: $v must be a positive number" >&2; exit 2 ;; esac
done
[ "$CLIENTS" -le 18000 ] || { echo "bench-webhook: at most 18000 clients (limits.max_connections in the benchmark config)" >&2; exit 2; }
command -v node >/dev/null 2>&1 || { echo "bench-webhook: node is needed for the backend" >&2; exit 1; }

# shellcheck source=../tests/load/bench-lib.sh
. "$ROOT/tests/load/bench-lib.sh"

hb_build || { echo "bench-webhook: build failed" >&2; exit 1; }
hb_outputs bench-webhook webhook

BACKEND_PID=
cleanup() { hb_stop_server; hb_stop_pid "$BACKEND_PID"; rm -rf "$HB_TMP"; }
trap cleanup EXIT
trap 'echo "bench-webhook: interrupted" >&2; exit 130' INT TERM

# The backend: allows every connect (with an identity) and every join.
BACKEND_LOG=$HB_TMP/backend.log
node -e '
const { Backend } = require(process.argv[1]);
const allow = (r) => ({ json: r.path === "/connect" ? { allow: true, id: "u" + r.json.remote_addr } : { allow: true } });
Backend.start(null, allow, { record: false }).then((b) => console.error(`listening on http://127.0.0.1:${b.port}`));
' "$ROOT/tests/integration/lib/backend.js" 2>"$BACKEND_LOG" &
BACKEND_PID=$!
BACKEND_PORT=$(hb_wait_listening "$BACKEND_LOG" "$BACKEND_PID" 100) ||
  { echo "bench-webhook: the backend did not start:" >&2; tail -5 "$BACKEND_LOG" >&2; exit 1; }

WEBHOOK_CONFIG="plugins = { { \"webhook_auth\", connect_url = \"http://127.0.0.1:$BACKEND_PORT/connect\",
                join_url = \"http://127.0.0.1:$BACKEND_PORT/join\" } }
scripts = { http = { pool_size = $POOL } }"

# CPU seconds process $1 has used so far (utime + stime), for the backend's share.
TICKS=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_s() { awk -v t="$TICKS" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# The value of a numeric field of a JSON line ("null" when absent).
field() { local v; v=$(printf '%s' "$2" | grep -o "\"$1\":[0-9.e+-]*" | head -1 | cut -d: -f2); printf '%s\n' "${v:-null}"; }

# run VARIANT: one connect run against a fresh herald; its JSON line (with
# "variant", the backend requests herald made and the backend's CPU seconds
# over the run) goes to $OUT.
run() {
  local variant=$1 extra= line reqs cpu0 cpu1
  [ "$variant" = webhook ] && extra=$WEBHOOK_CONFIG
  hb_start_herald_node "$variant" "$extra" || {
    printf '{"scenario":"connect","variant":"%s","error":"herald did not start"}\n' "$variant" | tee -a "$OUT"
    return 1
  }
  cpu0=$(cpu_s "$BACKEND_PID")
  # shellcheck disable=SC2086
  line=$(timeout 150 "$BENCH_BIN" -s connect -p "$SRV_PORT" -P "$SRV_PID" -n "$CLIENTS" $BENCH_ARGS)
  [ -n "$line" ] || line='{"scenario":"connect","error":"herald-bench gave no result"}'
  cpu1=$(cpu_s "$BACKEND_PID")
  reqs=$(curl -s -m 5 "http://127.0.0.1:$SRV_PORT/metrics" | awk '$1 == "herald_lua_http_requests_total" { print $2 }')
  if ! kill -0 "$SRV_PID" 2>/dev/null; then
    hb_log "!! herald exited during the $variant run; the end of its log:"
    tail -20 "$SRV_LOG" >&2
  fi
  hb_stop_server
  line="{\"variant\":\"$variant\",\"backend_requests\":${reqs:-null},\"backend_cpu_s\":$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }'),${line#\{}"
  printf '%s\n' "$line" | tee -a "$OUT"
  sleep 1 # let the kernel tear the sockets down before the next server
}

echo "bench-webhook: $CLIENTS clients, connect + join, $RUNS run(s) of each; backend on port $BACKEND_PORT; results in $OUT" >&2
for ((i = 1; i <= RUNS; i++)); do
  # alternate the order, so that neither variant always runs on a warmer machine
  if ((i % 2)); then order=(plain webhook); else order=(webhook plain); fi
  for v in "${order[@]}"; do echo "-- $v (run $i/$RUNS)" >&2; run "$v"; done
done

echo
printf '%-8s %14s %12s %8s %8s %12s %12s %12s\n' variant connect_rate conn_p99_ms ready failed backend_req herald_cpu_s backend_cpu_s
while IFS= read -r l; do
  v=$(printf '%s' "$l" | grep -o '"variant":"[a-z]*"' | cut -d'"' -f4)
  printf '%-8s %14s %12s %8s %8s %12s %12s %12s\n' "$v" "$(field connect_rate "$l")" "$(field conn_p99_ms "$l")" \
    "$(field ready "$l")" "$(field failed "$l")" "$(field backend_requests "$l")" \
    "$(field server_cpu_connect_s "$l")" "$(field backend_cpu_s "$l")"
done <"$OUT"
awk -F'"connect_rate":' '
  /"variant":"plain"/ && NF > 1 { split($2, a, /[,}]/); p += a[1]; np++ }
  /"variant":"webhook"/ && NF > 1 { split($2, a, /[,}]/); w += a[1]; nw++ }
  END { if (np && nw && p > 0) printf "webhook_auth / plain connect rate (means): %.0f / %.0f = %.2f\n", w / nw, p / np, (w / nw) / (p / np) }' "$OUT"
