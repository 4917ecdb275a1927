"""What Redis did during a benchmark's window, for scripts/cluster-bench.sh and
scripts/cluster-large.sh: the INFO snapshots taken at its start and end (files
info-start and info-end in a run's directory; the publish window: before the
first publish and after the last delivery), and the PUBSUB NUMSUB of the topic
(file numsub). add_window adds to a result dict: redis_cmds (by command, those
run inside scripts included: Redis counts them too), redis_cmds_total,
redis_publish_calls, redis_other_cmds, redis_cpu_<window>_s, redis_numsub_fan,
and for the publish window redis_cmds_per_publish, redis_publish_per_publish,
redis_usec_per_publish. add_monitor reads a MONITOR of the window (file
monitor): the commands clients sent apart from those scripts ran."""
import os
import re


def _info(path):
    cmds, vals = {}, {}
    try:
        text = open(path).read()
    except OSError:
        return None, None
    for line in text.splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
        if m:
            cmds[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        elif ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            vals[k] = v.strip()
    return cmds, vals


def add_window(r, d, window="publish"):
    pub = (r.get("published") or 0) if window == "publish" else 0
    c0, v0 = _info(os.path.join(d, "info-start"))
    c1, v1 = _info(os.path.join(d, "info-end"))
    if c0 is None or c1 is None:
        r["redis_error"] = "no INFO snapshots (the --mark command did not run or failed)"
    else:
        delta = {}
        for k, (calls, usec) in c1.items():
            dc = calls - c0.get(k, (0, 0))[0]
            du = usec - c0.get(k, (0, 0))[1]
            if k == "info":
                dc -= 1  # the script's own INFO at the start
            if dc > 0:
                delta[k] = (dc, du)
        total = sum(v[0] for v in delta.values())
        pc, pu = delta.get("publish", (0, 0))
        r["redis_cmds"] = {k: v[0] for k, v in sorted(delta.items())}
        r["redis_cmds_total"] = total
        r["redis_publish_calls"] = pc
        r["redis_other_cmds"] = total - pc
        if window == "publish":
            r["redis_cmds_per_publish"] = round(total / pub, 3) if pub else None
            r["redis_publish_per_publish"] = round(pc / pub, 3) if pub else None
            r["redis_usec_per_publish"] = round(pu / pc, 2) if pc else None
        try:
            cpu = lambda v: float(v["used_cpu_sys"]) + float(v["used_cpu_user"])
            r["redis_cpu_%s_s" % window] = round(cpu(v1) - cpu(v0), 3)
        except (KeyError, ValueError):
            pass
    try:
        m = re.search(r"^(\d+)\s*$", open(os.path.join(d, "numsub")).read().split("\n", 1)[1], re.M)
        r["redis_numsub_fan"] = int(m.group(1)) if m else None
    except (OSError, IndexError):
        pass


_MON = re.compile(r"^\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def add_monitor(r, d, scripts=None):
    """From a MONITOR of the window (file monitor; the benchmark's own INFO
    left out): redis_sent (commands sent by clients, by name),
    redis_sent_total, redis_in_scripts (commands the scripts ran, by name)
    and, with scripts {name: argument count after EVALSHA}, redis_evalsha_by
    (EVALSHA calls by script, told apart by their argument count)."""
    sent, inner, by = {}, {}, {}
    try:
        lines = open(os.path.join(d, "monitor"), errors="replace").read().splitlines()
    except OSError:
        r["redis_monitor_error"] = "no MONITOR of the window"
        return
    for line in lines:
        m = _MON.match(line)
        if not m:
            continue
        args = _ARG.findall(m.group(2))
        if not args:
            continue
        name = args[0].lower()
        if m.group(1) == "lua":
            inner[name] = inner.get(name, 0) + 1
            continue
        if name in ("info", "monitor"):
            continue
        sent[name] = sent.get(name, 0) + 1
        if name == "evalsha" and scripts:
            k = next((s for s, n in scripts.items() if n == len(args) - 1), "other")
            by[k] = by.get(k, 0) + 1
    r["redis_sent"] = dict(sorted(sent.items()))
    r["redis_sent_total"] = sum(sent.values())
    r["redis_in_scripts"] = dict(sorted(inner.items()))
    if scripts:
        r["redis_evalsha_by"] = by
