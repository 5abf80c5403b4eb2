"""Where the time of a no-op run goes: imports (-X importtime) and a cProfile
of the whole doit run, on the same fixture stack."""

from __future__ import annotations

import io
import pstats
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fixtures import Upstreams, write_stack
from harness import DODO, FLOOR_IMPORT, Harness, checkouts


def steps(h: Harness, project: Path, reps: int) -> list[str]:
    """Wall time of the pieces of a no-op, each run on its own, interleaved."""
    py = [sys.executable]
    dodo = [*py, "-m", "tasks", f"stack={project / 'stack.yaml'}"]
    load = (f"import sys; sys.path.insert(0, {str(DODO.parent)!r}); import doit.cmd_run; "
            "from tasks import loader, stackcache; "
            f"stackcache.load({str(project / 'stack.yaml')!r}, {str(DODO.parent)!r})")
    cos = checkouts(project)
    status = ["status", "--porcelain=v2", "-z", "--branch", "--untracked-files=all"]

    def run(cmd):
        subprocess.run(cmd, env=h.env, cwd=project, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)

    def threads(cmds):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(run, cmds))

    pieces = {
        "python -c pass": [[*py, "-c", "pass"]],
        "python + the floor's imports": [[*py, "-c", FLOOR_IMPORT]],
        "python + the tool's imports + stack.yaml loaded": [[*py, "-c", load]],
        "doit list (+ doit's setup and the task dicts)": [[*dodo, "list"]],
        "doit (the no-op)": [dodo],
        f"git status in the {len(cos)} checkouts, one after the other (the floor's)":
            [["git", "-C", str(c), "status"] for c in cos],
        f"the same with the tool's flags ({' '.join(status[1:])})":
            [["git", "-C", str(c), *status] for c in cos],
        "the same, 4 at a time in threads": ("threads", [["git", "-C", str(c), *status]
                                                         for c in cos]),
    }
    times = {k: [] for k in pieces}
    for _ in range(reps):
        for name, cmds in pieces.items():
            start = time.perf_counter()
            if isinstance(cmds, tuple):
                threads(cmds[1])
            else:
                for cmd in cmds:
                    run(cmd)
            times[name].append(time.perf_counter() - start)
    out = [f"the pieces of a no-op, alone ({reps} rounds, medians):"]
    for name, values in times.items():
        out.append(f"  {statistics.median(values) * 1000:6.0f} ms  {name}")
    return out


def run(h: Harness, up: Upstreams, reps: int = 10) -> list[str]:
    project = write_stack(h.root / "p-profile", up).parent
    h.doit(project)
    for _ in range(2):
        h.doit(project)  # settle caches
    lines = steps(h, project, reps) + [""]

    r = h.doit(project, python=[sys.executable, "-X", "importtime"])
    imports = []
    for line in r.err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m.group(3):  # top level: what the run itself imports
            imports.append((int(m.group(2)), m.group(4)))
    total = sum(c for c, _ in imports)
    lines.append(f"imports: {total / 1000:.0f} ms in all (a -X importtime run took "
                 f"{r.seconds * 1000:.0f} ms); the largest:")
    for cumulative, name in sorted(imports, reverse=True)[:12]:
        lines.append(f"  {cumulative / 1000:7.1f} ms  {name}")

    prof = h.root / "noop.prof"
    r = h.doit(project, python=[sys.executable, "-m", "cProfile", "-o", str(prof)])
    stream = io.StringIO()
    stats = pstats.Stats(str(prof), stream=stream)
    stats.sort_stats("cumulative").print_stats(30)
    lines.append(f"\ncProfile of a no-op (the profiled run took {r.seconds * 1000:.0f} ms), "
                 "by cumulative time:")
    body = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(body) if line.lstrip().startswith("ncalls")), 0)
    lines.extend(body[start:start + 32])
    stream = io.StringIO()
    stats = pstats.Stats(str(prof), stream=stream)
    stats.sort_stats("tottime").print_stats(12)
    body = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(body) if line.lstrip().startswith("ncalls")), 0)
    lines.append("\nby own time:")
    lines.extend(body[start:start + 14])
    return lines
