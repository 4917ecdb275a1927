#!/usr/bin/env bash
# make bench-cluster-large: the cluster-large benchmark (issue 12). 100,000
# WebSocket clients joined to one topic across 6 herald processes that share
# one port (listen.reuseport: the kernel spreads the connections), each its
# own cluster node on one redis-server; one publisher sends 5 messages, each
# once the previous has reached every client. Reports the connect+join rate,
# per message the time from the publish to its last delivery, the delivery
# latency p50/p99/max, deliveries missing, the herald processes' RSS per
# connection (after the joins, minus their RSS before) and what Redis
# executed per publish.
#
#   scripts/cluster-large.sh [CLIENTS]              default 100000
#   CLUSTER_LARGE_NODES=6 BENCH_RUNS=2 scripts/cluster-large.sh
#
# Environment: CLUSTER_LARGE_CLIENTS (the same as the argument),
# CLUSTER_LARGE_NODES (herald processes, default 6), BENCH_RUNS, BENCH_ARGS
# (extra herald-bench flags, e.g. "-m 10"), BUILD, BENCH_OUT as for
# scripts/bench.sh. Every run starts fresh herald processes (stopped by PID
# afterwards); one redis-server of our own (a free 127.0.0.1 port, no
# persistence, stopped by PID at the end) serves the whole script. Only
# 127.0.0.x is used.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
RUNS=${BENCH_RUNS:-1}
BENCH_ARGS=${BENCH_ARGS:-}
CLIENTS=${1:-${CLUSTER_LARGE_CLIENTS:-100000}}
NODES=${CLUSTER_LARGE_NODES:-6}
case $RUNS in '' | *[!0-9]* | 0) echo "cluster-large: BENCH_RUNS must be a positive number" >&2; exit 2 ;; esac
case $CLIENTS in '' | *[!0-9]* | 0) echo "cluster-large: CLIENTS must be a positive number" >&2; exit 2 ;; esac
case $NODES in '' | *[!0-9]* | 0) echo "cluster-large: CLUSTER_LARGE_NODES must be a positive number" >&2; exit 2 ;; esac
[ "$NODES" -le 8 ] || { echo "cluster-large: at most 8 nodes (herald-bench samples 8 pids)" >&2; exit 2; }
# The kernel spreads the connections evenly but not exactly (a few hundred
# more on some process): a node must stay below limits.max_connections (19,000)
# and the 20,000 open files a process may have here.
PER=$(((CLIENTS + NODES - 1) / NODES))
if [ "$PER" -gt 18000 ]; then
  echo "cluster-large: $CLIENTS clients over $NODES nodes is $PER per node; at most 18,000 fit" \
    "(20,000 open files per process): use more CLUSTER_LARGE_NODES" >&2
  exit 2
fi
command -v python3 >/dev/null 2>&1 || { echo "cluster-large: python3 is needed" >&2; exit 1; }

# shellcheck source=../tests/load/bench-lib.sh
. "$ROOT/tests/load/bench-lib.sh"

hb_build || { echo "cluster-large: build failed" >&2; exit 1; }

hb_outputs cluster-large cluster-large append
NODE_PIDS=()
NODE_LOGS=()
PORT=

# Stops every node we started: SIGTERM to all at once, then each is waited
# for (20 s at most in all, then SIGKILL).
stop_nodes() {
  local p i
  for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for ((i = 0; i < 200; i++)); do
    local alive=0
    for p in "${NODE_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${NODE_PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      hb_log "node $p still running after 20 s: SIGKILL"
      kill -KILL "$p" 2>/dev/null
    fi
    wait "$p" 2>/dev/null
  done
  NODE_PIDS=()
  NODE_LOGS=()
}
cleanup() { stop_nodes; hb_stop_redis; rm -rf "$HB_TMP"; }
trap cleanup EXIT
trap 'echo "cluster-large: interrupted" >&2; exit 130' INT TERM

# start_nodes RUN: NODES herald processes on one free port (reuseport), each a
# cluster node; ready when each has logged that it listens and that its
# Redis link is up (its /readyz is not reachable apart: the port is shared).
start_nodes() {
  local run=$1 i k try extra ok
  for try in 1 2 3; do
    PORT=$(hb_free_port) || return 1
    extra="listen = { host = \"127.0.0.1\", port = $PORT, reuseport = true }
cluster = { redis = \"redis://127.0.0.1:$REDIS_PORT\", required = true }"
    ok=1
    for ((i = 0; i < NODES; i++)); do
      hb_start_herald_node "run$run-node$i" "$extra" || { ok=0; break; }
      NODE_PIDS+=("$SRV_PID")
      NODE_LOGS+=("$SRV_LOG")
      SRV_PID= # stopped through NODE_PIDS
    done
    if [ $ok = 1 ]; then
      for i in "${!NODE_LOGS[@]}"; do
        for ((k = 0; k < 100; k++)); do
          grep -q 'cluster: .* up' "${NODE_LOGS[$i]}" 2>/dev/null && break
          sleep 0.1
        done
        if ! grep -q 'cluster: .* up' "${NODE_LOGS[$i]}" 2>/dev/null; then
          hb_log "node $i: no Redis link after 10 s; its log:"
          tail -20 "${NODE_LOGS[$i]}" >&2
          return 1
        fi
      done
      return 0
    fi
    hb_log "the nodes did not start on port $PORT (try $try)"
    stop_nodes
  done
  return 1
}

# The --mark command: Redis counters just before the first publish and just
# after the last delivery, and a MONITOR of that window, which tells the
# topic's PUBLISHes from the probes a node sends on its own channel after 5 s
# of silence (the nodes' /metrics are not reachable one by one through the
# shared port; herald-bench reads each process from /proc).
write_mark() {
  local dir=$1 f=$2
  cat >"$f" <<EOF
#!/bin/sh
# generated by scripts/cluster-large.sh; \$1: start | end
d='$dir'
if [ "\$1" = start ]; then
  timeout 5 redis-cli -p $REDIS_PORT PUBSUB NUMSUB 'herald:t:{fan}' >"\$d/numsub" 2>&1
  # at most 200 s; stopped by its PID at "end"
  timeout 200 redis-cli -p $REDIS_PORT MONITOR >"\$d/monitor" 2>&1 </dev/null &
  echo \$! >"\$d/monitor.pid"
  # MONITOR is on once it has printed OK (2 s at most)
  i=0
  while [ \$i -lt 100 ] && ! grep -q '^OK' "\$d/monitor" 2>/dev/null; do sleep 0.02; i=\$((i + 1)); done
fi
timeout 5 redis-cli -p $REDIS_PORT INFO cpu commandstats stats >"\$d/info-\$1" 2>&1 || exit 1
if [ "\$1" = end ] && [ -s "\$d/monitor.pid" ]; then
  kill "\$(cat "\$d/monitor.pid")" 2>/dev/null
fi
exit 0
EOF
}

# enrich LINE DIR RUN: the herald-bench line with the Redis figures of the
# publish phase and a few summaries added.
enrich() {
  HB_LOAD="$ROOT/tests/load" python3 - "$1" "$2" "$3" "$NODES" <<'PY'
import json, os, re, statistics, sys
line, d, run, nodes = sys.argv[1:5]
try:
    r = json.loads(line)
except ValueError:
    r = {"scenario": "cluster-large", "error": "unreadable herald-bench line: " + line[:200]}
r["run"] = int(run)
r["nodes_n"] = int(nodes)
r["server"] = "herald %sx reuseport" % nodes

sys.path.insert(0, os.environ["HB_LOAD"])
import redis_window
redis_window.add_window(r, d)
pub = r.get("published") or 0
# MONITOR: the window's PUBLISH commands by channel (the topic's, or a node's
# own probe channel herald:n:{<node>})
try:
    pubs = {}
    for l in open(os.path.join(d, "monitor"), errors="replace"):
        m = re.search(r'"(?:PUBLISH|publish)" "([^"]*)"', l)
        if m:
            ch = m.group(1)
            k = "topic" if ch == "herald:t:{fan}" else "probe" if ch.startswith("herald:n:{") else "other"
            pubs[k] = pubs.get(k, 0) + 1
    r["redis_publish_by_channel"] = pubs
    r["redis_topic_publish_per_publish"] = round(pubs.get("topic", 0) / pub, 3) if pub else None
except OSError:
    pass

pm = r.get("per_message") or []
last = [m["last_ms"] for m in pm if m.get("deliveries")]
if last:
    r["last_delivery_ms_median"] = round(statistics.median(last), 3)
    r["last_delivery_ms_max"] = round(max(last), 3)
procs = r.get("procs") or []
conns = [p.get("conns") for p in procs if isinstance(p.get("conns"), int)]
if conns:
    r["conns_per_node_min"], r["conns_per_node_max"] = min(conns), max(conns)
print(json.dumps(r, separators=(",", ":")))
PY
}

# run_once RUN
run_once() {
  local run=$1 line rc others i dir mark pids=()
  others=$(pgrep -x herald-bench 2>/dev/null | tr '\n' ' ')
  [ -n "$others" ] && hb_log "warning: other herald-bench processes are running ($others): these figures will be skewed"
  if ! start_nodes "$run"; then
    stop_nodes
    printf '{"scenario":"cluster-large","run":%d,"error":"the nodes did not start"}\n' "$run" | tee -a "$OUT"
    return 1
  fi
  dir="$HB_TMP/run$run"
  mkdir -p "$dir"
  mark="$dir/mark.sh"
  write_mark "$dir" "$mark"
  for i in "${NODE_PIDS[@]}"; do pids+=(-P "$i"); done
  # shellcheck disable=SC2086
  line=$(timeout 280 "$BENCH_BIN" -s cluster-large -p "$PORT" -n "$CLIENTS" "${pids[@]}" \
    --mark "sh $mark" $BENCH_ARGS)
  rc=$?
  [ -n "$line" ] || line=$(printf '{"scenario":"cluster-large","error":"herald-bench exited %s with no result"}' "$rc")
  hb_check_nodes cluster-large cluster-large
  stop_nodes
  enrich "$line" "$dir" "$run" | tee -a "$OUT"
  # let the kernel finish tearing the sockets down before the next run
  sleep 2
}

hb_start_redis || { echo "cluster-large: could not start redis-server" >&2; exit 1; }
echo "herald cluster-large: $CLIENTS clients over $NODES nodes on one port (runs: $RUNS);" \
  "redis-server on 127.0.0.1:$REDIS_PORT; results in $OUT" >&2
for ((run = 1; run <= RUNS; run++)); do
  echo "-- cluster-large (run $run/$RUNS)" >&2
  run_once "$run"
done

echo
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
rows = [r for r in rows if r.get("scenario") == "cluster-large"]

def f(v, nd=0):
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:,.{nd}f}"

def table(hdr, out):
    w = [max(len(h), *(len(r[i]) for r in out)) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w[i]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(hdr)))
    print("  ".join("-" * x for x in w))
    for r in out:
        print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))

out = []
for r in rows:
    out.append([str(r.get("run")), f(r.get("ready")), f(r.get("failed")),
                f"{f(r.get('conns_per_node_min'))}-{f(r.get('conns_per_node_max'))}",
                f(r.get("connect_rate")), f(r.get("conn_p99_ms"), 1),
                f(r.get("last_delivery_ms_median"), 1), f(r.get("last_delivery_ms_max"), 1),
                f(r.get("lat_p50_ms"), 1), f(r.get("lat_p99_ms"), 1), f(r.get("lat_max_ms"), 1),
                f(r.get("missing")), f(r.get("rss_per_conn_bytes")),
                f(r.get("redis_topic_publish_per_publish"), 2),
                f((r.get("redis_publish_by_channel") or {}).get("probe", 0)),
                f(r.get("redis_cmds_per_publish"), 2),
                f(r.get("redis_numsub_fan")), f(r.get("other_cpu_s"), 1),
                (r.get("error") or "")[:60]])
if out:
    table(["run", "ready", "failed", "conns/node", "connect/s", "conn p99 ms", "last ms med",
           "last ms max", "p50 ms", "p99 ms", "max ms", "missing", "RSS B/conn", "topic PUBLISH/pub",
           "probes", "cmds/pub", "NUMSUB", "other CPU s", "error"], out)
for r in rows:
    pm = r.get("per_message") or []
    if pm:
        print(f"\nrun {r.get('run')}, per message (ms from the publish): "
              + "; ".join(f"#{m['i']} last {m['last_ms']:.1f} p50 {m['lat_p50_ms']:.1f}"
                          f" p99 {m['lat_p99_ms']:.1f} missing {m['missing']}" for m in pm))
    procs = r.get("procs") or []
    if procs:
        print(f"run {r.get('run')}, per process: "
              + "; ".join(f"{p['pid']}: {p.get('conns')} conns, "
                          f"{f(p.get('rss_per_conn_bytes'))} B/conn" for p in procs))
print("\nconnect/s: connect + upgrade + join per second over all clients. last ms: from a"
      " publish to its last delivery anywhere (median and max over the messages); p50/p99/max:"
      " publish-to-delivery latency over every delivery. RSS B/conn: the herald processes' RSS"
      " after the joins minus before, summed, per joined client. topic PUBLISH/pub: PUBLISHes"
      " on herald:t:{fan} (MONITOR) per publish made; probes: PUBLISHes of a node on its own"
      " channel (a link silent for 5 s is probed); cmds/pub: every command Redis executed during"
      " the publish phase per publish (with the probes and the liveness SET of every node every"
      " cluster.heartbeat_ms). NUMSUB: nodes subscribed to the topic's channel.")
PY
