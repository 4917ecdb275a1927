#!/usr/bin/env python3
"""Summarises herald-bench JSON lines (one per run) as readable tables.

    bench-summary.py RESULTS.jsonl            one row per scenario and server
    bench-summary.py --compare RESULTS.jsonl  herald beside its peers, with ratios

With several runs of the same scenario and server, every figure is the median
of the runs.
"""
import json
import statistics
import sys

ORDER = ["idle", "idle-longpoll-ws", "idle-longpoll", "fanout", "fanout-v1half", "fanout-longpoll", "fanout-paced", "fanout-burst", "many-topics", "connect", "api",
         "fanout-history", "recovery-storm"]
SERVERS = ["herald", "nchan", "node"]


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def merge(rows):
    """(scenario, server) -> medians of the numeric fields, errors joined."""
    groups = {}
    for r in rows:
        groups.setdefault((r.get("scenario"), r.get("server")), []).append(r)
    out = {}
    for key, rs in groups.items():
        m = {"runs": len(rs)}
        keys = {k for r in rs for k in r}
        for k in keys:
            vals = [r[k] for r in rs if k in r]
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if nums and len(nums) == len(vals):
                m[k] = statistics.median(nums)
            elif all(isinstance(v, bool) for v in vals):
                m[k] = all(vals)
            else:
                uniq = []
                for v in vals:
                    if v not in ("", None) and v not in uniq:
                        uniq.append(v)
                m[k] = "; ".join(str(v) for v in uniq)
        out[key] = m
    return out


def order_key(k):
    s, srv = k
    return (ORDER.index(s) if s in ORDER else 99, s or "",
            SERVERS.index(srv) if srv in SERVERS else 99)


def fmt(v, nd=0):
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, float)):
        if nd == 0:
            return f"{v:,.0f}"
        return f"{v:,.{nd}f}"
    return str(v)


def table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def summary(merged):
    headers = ["scenario", "server", "runs", "ready", "conn/s", "pubs/s", "deliv/s",
               "p50 ms", "p90 ms", "p99 ms", "max ms", "B/conn", "srv CPU s",
               "cli CPU s", "cli share", "srv util", "missing", "errors"]
    rows = []
    for key in sorted(merged, key=order_key):
        m = merged[key]
        # recovery-storm publishes a few messages per phase: no rate to show
        pubs = fmt(m.get("pubs_per_s")) if m.get("published") and "storm_s" not in m else "-"
        if "pubs_per_s_1sub" in m:
            pubs = f"{fmt(m.get('pubs_per_s'))}/{fmt(m.get('pubs_per_s_1sub'))}"
        util = m.get("server_util_publish", m.get("server_util_connect"))
        lat = [fmt(m.get(k), 2) if m.get("deliveries") else "-"
               for k in ("lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_max_ms")]
        err = m.get("error", "")
        if m.get("server_alive") is False:
            err = "SERVER DIED; " + err
        other, wall = m.get("other_cpu_s"), m.get("wall_s")
        if isinstance(other, (int, float)) and isinstance(wall, (int, float)) and \
                other > max(2.0, 0.2 * wall):
            err = f"machine busy: {other:.1f} s CPU of other processes; " + err
        rows.append([key[0] or "?", key[1] or "?", fmt(m.get("runs")),
                     f"{fmt(m.get('ready'))}/{fmt(m.get('clients'))}",
                     fmt(m.get("connect_rate")), pubs,
                     fmt(m.get("deliveries_per_s")) if m.get("deliveries") else "-",
                     *lat,
                     fmt(m.get("rss_per_conn_bytes")), fmt(m.get("server_cpu_s"), 2),
                     fmt(m.get("client_cpu_s"), 2), fmt(m.get("client_cpu_share"), 2),
                     fmt(util, 2), fmt(m.get("missing")), (err[:60] if err else "")])
    table(headers, rows)
    print("\napi: pubs/s is 'no subscriber/one subscriber'. srv util: server CPU seconds per"
          " second of the publish phase (connect phase when nothing is published); near 1.0 a"
          " single-threaded server is saturated. cli share: client CPU / (client + server CPU).")
    storms = [k for k in sorted(merged, key=order_key) if "storm_s" in merged[k]]
    if storms:
        storm_table(merged, storms)
    lp = [k for k in sorted(merged, key=order_key) if k[0] == "idle-longpoll"]
    if lp:
        longpoll_table(merged, lp)
    mixed = [k for k in sorted(merged, key=order_key) if merged[k].get("v1_percent")]
    if mixed:
        # the V2-only runs of the same scenarios beside them (fanout for fanout-v1half)
        base = {k[0].split("-v1")[0] for k in mixed}
        keys = [k for k in sorted(merged, key=order_key)
                if k in mixed or (k[0] in base and not merged[k].get("v1_percent"))]
        serializer_table(merged, keys)


def longpoll_table(merged, keys):
    """idle-longpoll: bytes of herald's RSS per idle LongPoll session (a poll held)
    beside bytes per idle WebSocket (idle-longpoll-ws: the same N and config)."""
    headers = ["server", "runs", "sessions", "B/session", "WebSockets", "B/WebSocket",
               "session/ws", "RSS MB lp/ws", "fds lp/ws", "polls", "errors"]
    rows = []
    for key in keys:
        m, w = merged[key], merged.get(("idle-longpoll-ws", key[1]), {})
        b_lp, b_ws = m.get("rss_per_conn_bytes"), w.get("rss_per_conn_bytes")
        ratio = f"{b_lp / b_ws:.2f}x" if isinstance(b_lp, (int, float)) and \
            isinstance(b_ws, (int, float)) and b_ws else "-"

        def mb(r):
            held, base = r.get("rss_held_kb"), r.get("rss_base_kb")
            return fmt((held - base) / 1024, 1) if isinstance(held, (int, float)) and \
                isinstance(base, (int, float)) else "-"

        def fds(r):
            held, base = r.get("server_fds_held"), r.get("server_fds_base")
            return fmt(held - base) if isinstance(held, (int, float)) and \
                isinstance(base, (int, float)) else "-"
        err = "; ".join(e for e in (m.get("error", ""), w.get("error", "")) if e)
        if m.get("server_alive") is False or w.get("server_alive") is False:
            err = "SERVER DIED; " + err
        rows.append([key[1] or "?", fmt(m.get("runs")),
                     f"{fmt(m.get('ready'))}/{fmt(m.get('clients'))}", fmt(b_lp),
                     f"{fmt(w.get('ready'))}/{fmt(w.get('clients'))}" if w else "-", fmt(b_ws),
                     ratio, f"{mb(m)}/{mb(w)}", f"{fds(m)}/{fds(w)}", fmt(m.get("lp_polls")),
                     (err[:60] if err else "")])
    print("\nidle-longpoll: idle LongPoll sessions against idle WebSockets")
    table(headers, rows)
    print("\nB/session, B/WebSocket: herald's RSS after the joins and the hold, less its RSS"
          " before, per client ready (each its own topic, as idle); a session holds one poll,"
          " one TCP connection (fds: herald's open files held, less before); RSS MB: that"
          " growth; polls: sent in all (the one that fetched the join reply, then the one held).")


def serializer_table(merged, keys):
    """-V runs (some clients on V1) beside the all-V2 runs of the same scenario."""
    headers = ["scenario", "server", "runs", "V1 %", "V1 ready", "deliv/s", "p50 ms", "p99 ms",
               "V1 p50", "V1 p99", "V2 p50", "V2 p99", "srv CPU pub s", "us/deliv",
               "RSS peak MB", "missing", "V1 missing", "wrong vsn", "errors"]
    rows = []
    for key in keys:
        m = merged[key]
        v1 = bool(m.get("v1_percent"))
        cpu, deliv = m.get("server_cpu_publish_s"), m.get("deliveries")
        per = fmt(cpu * 1e6 / deliv, 2) if isinstance(cpu, (int, float)) and deliv else "-"
        peak = m.get("rss_peak_kb")
        err = m.get("error", "")
        if m.get("server_alive") is False:
            err = "SERVER DIED; " + err

        def lat(k):
            return fmt(m.get(k), 2) if v1 and m.get("deliveries") else "-"
        rows.append([key[0] or "?", key[1] or "?", fmt(m.get("runs")), fmt(m.get("v1_percent", 0)),
                     f"{fmt(m.get('v1_ready'))}/{fmt(m.get('v1_clients'))}" if v1 else "-",
                     fmt(m.get("deliveries_per_s")) if deliv else "-",
                     fmt(m.get("lat_p50_ms"), 2) if deliv else "-",
                     fmt(m.get("lat_p99_ms"), 2) if deliv else "-",
                     lat("v1_lat_p50_ms"), lat("v1_lat_p99_ms"), lat("v2_lat_p50_ms"),
                     lat("v2_lat_p99_ms"), fmt(cpu, 2), per,
                     fmt(peak / 1024, 1) if isinstance(peak, (int, float)) and peak > 0 else "-",
                     fmt(m.get("missing")), fmt(m.get("v1_missing")) if v1 else "-",
                     fmt(m.get("wrong_serializer")), (err[:60] if err else "")])
    print()
    table(headers, rows)
    print("\nV1 %: share of the clients on Phoenix's V1 serializer (herald-bench -V); V1/V2 p50,"
          " p99: the latency of each group apart; srv CPU pub s: herald's CPU from the first"
          " publish to the last delivery, us/deliv: that per delivery; wrong vsn: frames of the"
          " other serializer than the client's (must be 0).")


def storm_table(merged, keys):
    """recovery-storm: the drop and the rejoin with since, one row per server."""
    headers = ["scenario", "server", "runs", "rejoined", "recovered", "missed", "storm s",
               "reconn/s", "live p50", "live p99", "srv CPU s", "srv util", "RSS MB",
               "missing", "dup", "order", "live chk", "errors"]
    rows = []
    for key in keys:
        m = merged[key]
        mb = [fmt(m.get(k) / 1024, 1) if isinstance(m.get(k), (int, float)) and m.get(k) > 0
              else "-" for k in ("rss_held_kb", "rss_away_kb", "rss_storm_kb")]
        err = m.get("error", "")
        if m.get("server_alive") is False:
            err = "SERVER DIED; " + err
        rows.append([key[0] or "?", key[1] or "?", fmt(m.get("runs")),
                     f"{fmt(m.get('rejoined'))}/{fmt(m.get('dropped'))}",
                     f"{fmt(m.get('recovered_true'))}/{fmt(m.get('recovered_false'))}",
                     fmt(m.get("missed")), fmt(m.get("storm_s"), 3),
                     fmt(m.get("reconnect_rate")), fmt(m.get("live_p50_ms"), 1),
                     fmt(m.get("live_p99_ms"), 1), fmt(m.get("server_cpu_storm_s"), 2),
                     fmt(m.get("server_util_storm"), 2), "/".join(mb),
                     fmt(m.get("missing")), fmt(m.get("duplicates")), fmt(m.get("out_of_order")),
                     f"{fmt(m.get('live_check_ok'))}/{fmt(m.get('rejoined'))}",
                     (err[:60] if err else "")])
    print()
    table(headers, rows)
    print("\nrecovery-storm: rejoined/dropped clients; recovered true/false; missed: messages"
          " published while they were away; storm s: first reconnect to the last client live"
          " (recovered:true and every missed message in); live p50/p99: ms per client from its"
          " reconnect to live; srv CPU s / util over the storm; RSS MB before the drop / while"
          " away / after the storm; missing, dup, order: messages lost, twice, out of order"
          " (must be 0); live chk: clients the publish after the storm reached.")


# scenario -> [(field, label, better)] ; better: "high" or "low"
METRICS = {
    "idle": [("rss_per_conn_bytes", "RSS bytes per connection", "low"),
             ("connect_rate", "connect+join per s", "high"),
             ("server_cpu_s", "server CPU s", "low")],
    "fanout": [("deliveries_per_s", "deliveries per s", "high"),
               ("lat_p50_ms", "latency p50 ms", "low"), ("lat_p90_ms", "latency p90 ms", "low"),
               ("lat_p99_ms", "latency p99 ms", "low"), ("lat_max_ms", "latency max ms", "low"),
               ("pubs_per_s", "publishes per s", "high"),
               ("server_cpu_publish_s", "server CPU s (publish)", "low")],
    "connect": [("connect_rate", "connect+join per s", "high"),
                ("server_cpu_connect_s", "server CPU s (connect)", "low"),
                ("rss_per_conn_bytes", "RSS bytes per connection", "low")],
    "api": [("pubs_per_s", "publishes per s, no subscriber", "high"),
            ("pubs_per_s_1sub", "publishes per s, one subscriber", "high"),
            ("pub_p50_ms", "publish answer p50 ms", "low"),
            ("pub_p99_ms", "publish answer p99 ms", "low"),
            ("lat_p99_ms", "delivery latency p99 ms", "low")],
}
METRICS["fanout-burst"] = METRICS["fanout"]
METRICS["fanout-v1half"] = METRICS["fanout"]
METRICS["fanout-paced"] = METRICS["fanout"]
METRICS["many-topics"] = METRICS["fanout"] + [("rss_per_conn_bytes", "RSS bytes per connection", "low")]


def compare(merged):
    scenarios = sorted({k[0] for k in merged}, key=lambda s: (ORDER.index(s) if s in ORDER else 99, s))
    servers = [s for s in SERVERS if any(k[1] == s for k in merged)]
    peers = [s for s in servers if s != "herald"]
    for sc in scenarios:
        print(f"\n== {sc}")
        headers = ["metric", "better"] + servers + [f"herald/{p}" for p in peers]
        rows = []
        for field, label, better in METRICS.get(sc, []):
            vals = {s: merged.get((sc, s), {}).get(field) for s in servers}
            row = [label, better]
            for s in servers:
                row.append(fmt(vals[s], 2 if field.endswith("_ms") or field.endswith("_s")
                               and not field.endswith("per_s") else 0))
            for p in peers:
                h, v = vals.get("herald"), vals.get(p)
                if isinstance(h, (int, float)) and isinstance(v, (int, float)) and v:
                    row.append(f"{h / v:.2f}x")
                else:
                    row.append("-")
            rows.append(row)
        notes = []
        for s in servers:
            m = merged.get((sc, s), {})
            if m.get("server_alive") is False:
                notes.append(f"{s}: SERVER DIED")
            if m.get("missing"):
                notes.append(f"{s}: {fmt(m.get('missing'))} deliveries missing")
            if m.get("failed"):
                notes.append(f"{s}: {fmt(m.get('failed'))} clients failed")
            if m.get("error"):
                notes.append(f"{s}: {str(m.get('error'))[:100]}")
            other, wall = m.get("other_cpu_s"), m.get("wall_s")
            if isinstance(other, (int, float)) and isinstance(wall, (int, float)) and \
                    other > max(2.0, 0.2 * wall):
                notes.append(f"{s}: machine busy, {other:.1f} s CPU of other processes")
            if m.get("client_cpu_share") is not None:
                notes.append(f"{s}: client CPU share {fmt(m.get('client_cpu_share'), 2)}")
        table(headers, rows)
        for n in notes:
            print("   " + n)
    print("\nRatios are herald's figure divided by the peer's: above 1 is better for herald where"
          " 'better' is high, below 1 where it is low.")


def main(argv):
    mode = "summary"
    args = [a for a in argv[1:]]
    if args and args[0] == "--compare":
        mode = "compare"
        args = args[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = load(args[0])
    if not rows:
        print("no results", file=sys.stderr)
        return 1
    merged = merge(rows)
    if mode == "compare":
        compare(merged)
    else:
        summary(merged)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
