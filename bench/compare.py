"""The no-op of this tree against another commit's, side by side.

``python bench/run.py --compare REF`` writes REF's tree (``git archive``)
into the work folder, gives each tool a project of its own on the same
fixture upstreams, sets each up with two runs, then times, round after
round in a rotated order: this tree's no-op, REF's no-op and the floor.
Both tools run with this Python and its libraries: REF's ``dodo.py`` puts
its own folder first on ``sys.path``, so it imports its own ``tasks``.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from fixtures import Upstreams, write_stack
from harness import DODO, ROOT, Harness, Stats, checkouts, ms


def tree_of(ref: str, dest: Path) -> str:
    """REF's files under ``dest``; returns REF's short hash and subject."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref],
                          capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def run(h: Harness, up: Upstreams, reps: int, ref: str) -> dict:
    other = h.root / "ref-tree"
    described = tree_of(ref, other)
    tools = {"this tree": DODO, f"ref {ref}": other / "dodo.py"}
    projects = {}
    for n, (name, dodo) in enumerate(tools.items()):
        project = write_stack(h.root / f"p-compare-{n}", up).parent
        for _ in range(2):
            h.doit(project, dodo=dodo)
        again = h.doit(project, dodo=dodo)
        if again.ran:
            raise SystemExit(f"setup: {name}'s third run is not a no-op: {again.ran}")
        projects[name] = project
    cases = [*tools, "floor"]
    times = {c: [] for c in cases}
    for rep in range(reps):
        k = rep % len(cases)
        for case in cases[k:] + cases[:k]:
            if case == "floor":
                times[case].append(h.floor(checkouts(projects["this tree"])))
            else:
                times[case].append(h.doit(projects[case], dodo=tools[case]).seconds)
        print(f"  round {rep + 1}/{reps}: " + ", ".join(
            f"{c} {times[c][-1] * 1000:.0f}" for c in cases), flush=True)
    return {"times": times, "ref": ref, "described": described}


def report(res: dict, reps: int) -> list[str]:
    stats = {c: Stats(v) for c, v in res["times"].items()}
    this, ref = stats["this tree"], stats[f"ref {res['ref']}"]
    floor = stats["floor"].median
    lines = [f"ref {res['ref']}: {res['described']}",
             f"{'no-op of':34} {'median':>10} {'min':>10} {'max':>10} {'/ floor':>8}"]
    for case, s in stats.items():
        lines.append(f"{case:34} {ms(s.median)} {ms(s.min)} {ms(s.max)} "
                     f"{s.median / floor:7.2f}x")
    lines.append(f"this tree / ref: {this.median / ref.median:.2f}x "
                 f"(medians of {reps} interleaved rounds; min/min {this.min / ref.min:.2f}x)")
    return lines
