#!/usr/bin/env bash
# History and recovery across a rolling restart of a two-node cluster.
#
#   scripts/demo-recovery.sh [N]        (N clients, default 200)
#
# Starts a redis-server of its own on a free loopback port, two herald
# nodes joined by it (a topic with history: room:*), and
# scripts/demo-recovery.js: the test balancer in front of the nodes, N
# phoenix.js clients with examples/recovery.js on room:demo, and a
# publisher numbering messages through the balancer. Restarts node 1, then
# node 2 (SIGTERM: the drain closes the sockets with 1012, phoenix.js
# reconnects to the other node and rejoins with since; then the node starts
# again on its port). Prints what the clients received against the stream
# in Redis: received, lost, duplicated, recovered. Everything it started is
# stopped by its PID; every wait is bounded. Exit status 0 when nothing was
# lost or duplicated.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
[ -x build/herald ] || make build
[ -d tests/node_modules ] || bash scripts/deps.sh

DIR=$(mktemp -d "${TMPDIR:-/tmp}/herald-demo-recovery.XXXXXX")
REDIS_PID=
NODE_PID=("" "")
D_PID=

# Stops one process of ours by PID: SIGTERM, SIGKILL after 15 s.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$D_PID"
  stop_pid "${NODE_PID[0]}"
  stop_pid "${NODE_PID[1]}"
  stop_pid "$REDIS_PID"
  rm -rf "$DIR"
}
trap cleanup EXIT

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
# Waits (at most $3 seconds) for the regular expression $2 in file $1.
wait_log() {
  for _ in $(seq $(($3 * 20))); do grep -Eq "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "demo: timed out waiting for /$2/ in $1:" >&2
  tail -n 20 "$1" >&2
  return 1
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --dir "$DIR" >"$DIR/redis.log" 2>&1 &
REDIS_PID=$!
wait_log "$DIR/redis.log" 'Ready to accept connections' 15
echo "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

PORTS=("$(free_port)" "$(free_port)")
for i in 0 1; do
  cat >"$DIR/node$i.lua" <<EOF
listen = { host = "127.0.0.1", port = ${PORTS[$i]} }
cluster = { redis = "redis://127.0.0.1:$REDIS_PORT", required = true, node = "node$((i + 1))" }
drain = { timeout_ms = 15000, announce_ms = 200, disconnect_rate = 1000, http_idle_ms = 100 }
topics = { { match = "room:*", history_size = 10000, history_ttl_ms = 60000, recover_max = 1000 } }
EOF
done
# Starts node $1 (0 or 1) and waits for its "listening" and its Redis link.
start_node() {
  local i=$1 log="$DIR/node$1.log"
  : >"$log"
  build/herald -c "$DIR/node$i.lua" 2>>"$log" &
  NODE_PID[$i]=$!
  wait_log "$log" 'listening on http' 15
  wait_log "$log" 'cluster: .* up' 15
  echo "node $((i + 1)) on 127.0.0.1:${PORTS[$i]} (pid ${NODE_PID[$i]})"
}
start_node 0
start_node 1

coproc DRIVER { exec node scripts/demo-recovery.js "${PORTS[0]},${PORTS[1]}" "$REDIS_PORT" "$N"; }
# (bash unsets DRIVER and DRIVER_PID once the coprocess is gone: copies)
D_PID=$DRIVER_PID
exec {D_OUT}<&"${DRIVER[0]}" {D_IN}>&"${DRIVER[1]}"
# Reads the driver's next line (at most $1 seconds) and checks it starts with $2.
expect() {
  local line
  if ! read -r -t "$1" -u "$D_OUT" line; then echo "demo: no answer from the clients" >&2; exit 1; fi
  case "$line" in "$2"*) ;; *) echo "demo: unexpected: $line" >&2; exit 1 ;; esac
}
expect 60 joined

for i in 0 1; do
  echo "restarting node $((i + 1)) (SIGTERM to pid ${NODE_PID[$i]})"
  echo "away ${PORTS[$i]}" >&"$D_IN"
  kill -TERM "${NODE_PID[$i]}"
  rc=0
  wait "${NODE_PID[$i]}" || rc=$?
  NODE_PID[$i]=
  grep -E 'drain: (phase|complete)' "$DIR/node$i.log" | sed 's/^/    /'
  [ "$rc" -eq 0 ] || { echo "demo: node $((i + 1)) exited with $rc" >&2; exit 1; }
  start_node "$i"
  echo "up ${PORTS[$i]}" >&"$D_IN"
  expect 60 back
done

echo "finish" >&"$D_IN"
# The counts, as the driver prints them, then its exit status.
while read -r -t 60 -u "$D_OUT" line; do echo "$line"; done
rc=0
wait "$D_PID" || rc=$?
D_PID=
exit "$rc"
