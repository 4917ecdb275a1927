#!/usr/bin/env bash
# Starts a redis-server and N herald nodes joined by it on loopback, shows
# a publish on node 1 reaching a subscriber count on every node, prints
# each node's /admin/status cluster block, then stops everything it started
# (by PID).
#
#   scripts/cluster-demo.sh [N]     N nodes (default 3), ports from 4100
#   HOLD=1 scripts/cluster-demo.sh  keep them running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
case $n in '' | *[!0-9]* | 0) echo "cluster-demo: N must be a positive number" >&2; exit 2 ;; esac
[ -x build/herald ] || make build >/dev/null
command -v redis-server >/dev/null || bash scripts/deps.sh --no-npm

tmp=$(mktemp -d /tmp/herald-cluster-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "redis-server on 127.0.0.1:$rport (pid ${pids[0]})"

for i in $(seq 1 "$n"); do
  port=$((4099 + i))
  cat >"$tmp/node$i.lua" <<EOF
listen  = { host = "127.0.0.1", port = $port }
cluster = { redis = "redis://127.0.0.1:$rport" }
log     = { level = "info" }
EOF
  ./build/herald -c "$tmp/node$i.lua" >"$tmp/node$i.log" 2>&1 &
  pids+=($!)
  echo "node $i on 127.0.0.1:$port (pid $!), log $tmp/node$i.log"
done

status() { curl -s "127.0.0.1:$1/admin/status"; }
for i in $(seq 1 "$n"); do
  port=$((4099 + i))
  for _ in $(seq 1 100); do status "$port" | grep -q '"up":true' && break; sleep 0.05; done
done

echo
echo "each node's cluster block (GET /admin/status):"
for i in $(seq 1 "$n"); do
  port=$((4099 + i))
  printf 'node %d: ' "$i"
  status "$port" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["cluster"]))'
done

echo
echo "a publish on node 1 to demo:topic (no subscriber anywhere yet):"
curl -s -X POST "127.0.0.1:4100/api/push" -H 'content-type: application/json' \
  -d '{"channel":"demo:topic","event":"hello","data":{"n":1}}'
echo
echo "messages out of node 1: $(curl -s 127.0.0.1:4100/metrics | grep 'herald_cluster_messages_total{direction="out"}')"

if [ "${HOLD:-}" = 1 ]; then
  echo
  echo "running; join with phoenix.js at ws://127.0.0.1:4100/socket/websocket (and 4101, ...); Ctrl-C stops"
  wait "${pids[0]}"
fi
