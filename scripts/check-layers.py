#!/usr/bin/env python3
"""Check that core/ keeps its layers: includes and calls only go down.

Every module (core/<name>.c and core/<name>.h together) has a rank, given by
LAYERS below: layers from L0 (lowest) to L7, and within a layer the order
listed. A file may include, and call functions of, only modules of strictly
lower rank (its own module aside). That keeps the core a stack one can read,
test and replace from the bottom up, with no include circles. When a lower
module must reach up (the engine asking for a topic's policy, the transport
handing bytes to a protocol), it calls a function pointer that the upper
module registered at start-up: the callback is the only way up.

For every core/*.c and core/*.h the check reports:
  - #include "x.h" of a core module whose rank is not below the file's
    (<...> includes are ignored), or of a core header not in the table;
  - a call hd_name(...) to a function declared (or defined static inline,
    or as a function-like macro) in a core header of a module whose rank is
    not below the file's; names are read from the headers, comments and
    string literals are skipped, and taking a function's address is fine;
  - a core/*.c or core/*.h whose module is not in the table.
A module in the table with no files yet is fine.

Usage: check-layers.py [--list] [COREDIR]   (COREDIR defaults to ../core)
Exit status: 0 clean, 1 violations.
"""
import os
import re
import sys

# This table mirrors docs/architecture.md and ../shared/DESIGN.md. Changing
# the structure of core/ means changing this table in the same commit.
# Lowest first; within a layer, the listed order is also the rank order.
LAYERS = [
    ("L0", "pure", ["err", "util", "addr", "buf", "log", "embed", "stats", "ws", "phx", "luapi", "config"]),
    ("L1", "transport", ["peer", "conn", "listen", "httpc"]),
    ("L2", "engine", ["policy", "topic", "history", "presence", "shaper", "publish", "cluster"]),
    ("L3", "policy", ["script", "hooks"]),
    ("L4", "protocol", ["http", "wsconn", "longpoll", "channel"]),
    ("L5", "services", ["api", "metrics"]),
    ("L6", "node", ["drain", "server"]),
    ("L7", "assembly", ["cli", "main"]),
]

RANK, LAYER = {}, {}
for _lid, _lname, _mods in LAYERS:
    for _m in _mods:
        RANK[_m], LAYER[_m] = len(RANK), f"{_lid} {_lname}"

TOKEN = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)
CALL = re.compile(r'\b(hd_\w+)\s*\(')
MACRO = re.compile(r'^[ \t]*#[ \t]*define[ \t]+(hd_\w+)\(', re.M)
DECL = re.compile(r'^[^()=]*?\b(hd_\w+)\s*\(', re.S)


def strip(text, strings=True):
    """Blank out comments (and string/char literals), keeping newlines and quotes."""
    def blank(m):
        s = m.group(0)
        if s[0] not in "\"'":
            return re.sub(r"[^\n]", " ", s)
        return s[0] + " " * (len(s) - 2) + s[-1] if strings else s
    return TOKEN.sub(blank, text)


def pp_lines(code):
    """Set of 1-based line numbers that are preprocessor lines (with continuations)."""
    out, cont = set(), False
    for n, line in enumerate(code.split("\n"), 1):
        if cont or line.lstrip().startswith("#"):
            out.add(n)
            cont = line.rstrip().endswith("\\")
        else:
            cont = False
    return out


def toplevel(code, pp):
    """Yield (offset, char, brace depth) for each char outside preprocessor lines."""
    depth, line = 0, 1
    for i, ch in enumerate(code):
        if ch == "\n":
            line += 1
            yield i, " ", depth
            continue
        if line in pp:
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        yield i, ch, depth


def declared(code):
    """Names of the hd_ functions a header declares or defines at top level."""
    names = set(MACRO.findall(code))
    pp = pp_lines(code)
    chunk = []
    for _, ch, depth in toplevel(code, pp):
        if ch in ";{}":
            stmt = "".join(chunk).strip()
            chunk = []
            m = DECL.match(stmt)
            if m and not stmt.startswith("typedef"):
                names.add(m.group(1))
        elif depth == 0:
            chunk.append(ch)
    return names


def main(argv):
    args = [a for a in argv if a != "--list"]
    core = os.path.abspath(args[0] if args else os.path.join(os.path.dirname(__file__), "..", "core"))
    shown = os.path.basename(core)
    files = sorted(f for f in os.listdir(core) if f.endswith((".c", ".h")))
    if "--list" in argv:
        for lid, lname, mods in LAYERS:
            print(f"{lid} {lname}")
            for m in mods:
                sizes = [f"{f} {sum(1 for _ in open(os.path.join(core, f)))} lines"
                         for f in (m + ".c", m + ".h") if f in files]
                print(f"  {m:<10} {', '.join(sizes) or '(no files yet)'}")
        return 0

    src = {f: open(os.path.join(core, f), encoding="utf-8", errors="replace").read() for f in files}
    owner = {}  # function name -> module of the lowest-ranked header declaring it
    for f in files:
        mod = f[:-2]
        if f.endswith(".h") and mod in RANK:
            for name in declared(strip(src[f])):
                if name in owner and owner[name] != mod:
                    low = min(owner[name], mod, key=RANK.get)
                    print(f"warning: {name} declared in {owner[name]}.h and {mod}.h; using {low}",
                          file=sys.stderr)
                    mod_for = low
                else:
                    mod_for = mod
                owner[name] = mod_for

    errors = []  # (file, line, message)
    for f in files:
        mod = f[:-2]
        if mod not in RANK:
            errors.append((f, 1, f"{shown}/{f} is not in the layer table"))
            continue
        me = f"from {mod} ({LAYER[mod]})"
        code = strip(src[f], strings=False)
        for m in INCLUDE.finditer(code):
            inc = m.group(1)
            dep, line = inc[:-2] if inc.endswith(".h") else inc, code.count("\n", 0, m.start()) + 1
            if dep in RANK:
                if dep != mod and RANK[dep] >= RANK[mod]:
                    errors.append((f, line, f"includes {inc} ({LAYER[dep]}) {me}"))
            elif os.path.exists(os.path.join(core, inc)):
                errors.append((f, line, f"{shown}/{inc} is not in the layer table"))
        code = strip(src[f])
        pp = pp_lines(code)
        depth_at = {i: d for i, _, d in toplevel(code, pp)}
        seen = set()
        for m in CALL.finditer(code):
            name, dep = m.group(1), owner.get(m.group(1))
            if dep is None or dep == mod or RANK[dep] < RANK[mod]:
                continue
            line = code.count("\n", 0, m.start()) + 1
            # A call is inside a body or a macro; top-level names are declarations.
            if line in pp:
                if re.match(r"[ \t]*#[ \t]*define[ \t]+$", code[code.rfind("\n", 0, m.start()) + 1:m.start()]):
                    continue
            elif depth_at.get(m.start(), 0) == 0:
                continue
            if (line, name) not in seen:
                seen.add((line, name))
                errors.append((f, line, f"calls {name} ({dep}, {LAYER[dep]}) {me}"))

    for f, line, msg in errors:
        print(f"{shown}/{f}:{line}: {msg}")
    if errors:
        print(f"layering: {len(errors)} violation(s) in {len({e[0] for e in errors})} file(s)")
        return 1
    mods = {f[:-2] for f in files}
    print(f"layering: ok ({len(files)} files, {len(mods)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
