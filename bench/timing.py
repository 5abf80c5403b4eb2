"""Wall times of the common runs against the floor, interleaved.

(a) first full run: fresh workdir, staging folder and stack.lock each time;
    the upstreams are reused and fetched from local paths.
(b) no-op: nothing changed since the last run.
(c) no-op right after `git checkout` of another commit and back in every
    tree (checkouts and submodules): every tracked file rewritten.
(d) one file edited in one tree (cri-o's cmd/crio/main.go, new content each time).
(s) `doit status` on the no-op's project (read-only: what a plain doit would run);
    its target is at most 1.2x the no-op (b) of the same round.
(e) the floor: `python -c "import doit,pydantic,yaml,tomlkit"`, then
    `git status` in each checkout, one after the other, as a user would.
(e') the same floor right after the same checkout dance as (c): what git
    itself pays to re-read a tree whose every file moved.

Each case has its own project folder, so no case sees another's state.  One
round runs every case once, in an order rotated each round.
"""

from __future__ import annotations

import collections
import itertools

from fixtures import Upstreams, write_stack
from harness import Dance, Harness, Stats, checkouts, ms, remove

LABELS = {
    "first": "(a) first full run",
    "noop": "(b) no-op",
    "checkout": "(c) no-op after checkout dance",
    "edit": "(d) one file edited",
    "status": "(s) doit status",
    "floor": "(e) floor",
    "floor_co": "(e') floor after checkout dance",
}
TARGET = 1.1  # (b) against (e), and (c) against (e') (issue 19)
STATUS_TARGET = 1.2  # (s) against (b)


def run(h: Harness, up: Upstreams, reps: int, only: set[str]) -> dict:
    wanted = [c for c in LABELS if c in only or c.startswith("floor")]
    if "status" in wanted and "noop" not in wanted:  # (s) is judged against (b)
        wanted.insert(wanted.index("status"), "noop")
    projects = {}
    for case in wanted:
        name = {"floor_co": "checkout", "floor": "noop", "status": "noop"}.get(case, case)
        if name not in projects:
            projects[name] = write_stack(h.root / f"p-{name}", up).parent
    for name, project in projects.items():
        if name != "first":
            h.doit(project)
            again = h.doit(project)
            if again.ran:
                raise SystemExit(f"setup: the run after the first is not a no-op in {project}: "
                                 f"{again.ran}")
    dance = Dance(projects["checkout"]) if "checkout" in projects else None
    edited = projects["edit"] / "build/src/cri-o/cmd/crio/main.go" if "edit" in projects else None
    total = None

    def first():
        nonlocal total
        p = projects["first"]
        for leftover in ("build", "stage"):
            remove(p / leftover)
        (p / "stack.lock").unlink(missing_ok=True)
        r = h.doit(p)
        total = total or len(r.ran)
        return r.seconds, r.ran

    def noop():
        r = h.doit(projects["noop"])
        return r.seconds, r.ran

    def status():
        r = h.doit(projects["noop"], "status")
        if [t for t in r.ran if t != "status"]:
            raise SystemExit(f"doit status ran {r.ran}")
        return r.seconds, []

    def checkout():
        dance()
        r = h.doit(projects["checkout"])
        return r.seconds, r.ran

    edits = itertools.count(1)

    def edit():
        with open(edited, "a") as f:  # new content every time
            f.write(f"// edit {next(edits)}\n")
        r = h.doit(projects["edit"])
        return r.seconds, r.ran

    def floor():
        return h.floor(checkouts(projects["noop"])), []

    def floor_co():
        dance()
        return h.floor(checkouts(projects["checkout"])), []

    fns = {"first": first, "noop": noop, "checkout": checkout, "edit": edit, "floor": floor,
           "floor_co": floor_co, "status": status}
    times = {c: [] for c in wanted}
    ran = {c: collections.Counter() for c in wanted}
    for rep in range(reps):
        k = rep % len(wanted)
        for case in wanted[k:] + wanted[:k]:
            seconds, tasks = fns[case]()
            times[case].append(seconds)
            ran[case][tuple(sorted(tasks))] += 1
        print(f"  round {rep + 1}/{reps}: " + ", ".join(
            f"{c} {times[c][-1] * 1000:.0f}" for c in wanted), flush=True)
    return {"times": times, "ran": ran, "total": total}


def report(result: dict, reps: int) -> list[str]:
    times, ran = result["times"], result["ran"]
    stats = {c: Stats(v) for c, v in times.items()}
    floor = stats["floor"].median
    lines = [f"{'case':34} {'median':>10} {'min':>10} {'max':>10} {'/ (e)':>7}"]
    for case, s in stats.items():
        lines.append(f"{LABELS[case]:34} {ms(s.median)} {ms(s.min)} {ms(s.max)} "
                     f"{s.median / floor:6.2f}x")
    lines.append(f"({reps} rounds, interleaved; ratios are medians over the (e) median)")
    if "noop" in stats:
        ratio = stats["noop"].median / floor
        verdict = "meets" if ratio <= TARGET else "MISSES"
        lines.append(f"{LABELS['noop']}: {ratio:.2f}x the floor, {verdict} the {TARGET}x target")
    if "checkout" in stats:
        lines.append(f"{LABELS['checkout']}: {stats['checkout'].median / floor:.2f}x the floor")
    if "checkout" in stats and "floor_co" in stats:
        ratio = stats["checkout"].median / stats["floor_co"].median
        verdict = "meets" if ratio <= TARGET else "MISSES"
        lines.append(f"{LABELS['checkout']}: {ratio:.2f}x the floor after the same dance (e'), "
                     f"{verdict} the {TARGET}x target")
    if "status" in stats and "noop" in stats:
        ratio = stats["status"].median / stats["noop"].median
        verdict = "meets" if ratio <= STATUS_TARGET else "MISSES"
        lines.append(f"{LABELS['status']}: {ratio:.2f}x the no-op (b), {verdict} the "
                     f"{STATUS_TARGET}x target")
    if "first" in stats:
        lines.append(f"(a) ran {result['total']} tasks each time")
    for case in ("noop", "checkout", "edit"):
        if case in ran:
            for tasks, count in ran[case].items():
                lines.append(f"{LABELS[case]}: {count}x ran "
                             + (", ".join(tasks) if tasks else "nothing"))
    return lines
