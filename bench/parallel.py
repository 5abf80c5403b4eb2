"""Parallel builds: eight small components whose builds sleep for known
times in a known `needs` graph; `-n 1` and `-n 4 -P thread` wall times
against the critical path computed from the graph.

Two kinds of run, interleaved: a fresh run (fetch, patch, build, install
everything) and a rebuild (one source file edited in every checkout: every
build and install, no fetch or patch).
"""

from __future__ import annotations

from fixtures import COMPILE, Repo, Upstreams, _mk
from harness import Harness, Stats, ms, remove

# name -> (build seconds, needs)
GRAPH = {
    "a": (1.0, []),
    "b": (0.5, []),
    "c": (2.0, []),
    "d": (1.5, ["a"]),
    "e": (0.5, ["a", "b"]),
    "f": (1.0, ["d", "e"]),
    "g": (1.5, []),
    "h": (0.5, ["c"]),
}
TARGET = 1.15
MODES = ["fresh -n 1", "fresh -n 4", "rebuild -n 1", "rebuild -n 4"]

MAKEFILE = _mk("""
    PREFIX ?= /usr/local

    all: out/NAME

    out/NAME: src/NAME.c FORCE
        $(compile)

    install:
        install -D -m 0755 out/NAME $(DESTDIR)$(PREFIX)/bin/NAME

    FORCE:
    .PHONY: all install FORCE
    """)
assert COMPILE in MAKEFILE


def critical_path() -> tuple[float, list[str]]:
    finish: dict[str, tuple[float, list[str]]] = {}

    def f(name):
        if name not in finish:
            seconds, needs = GRAPH[name]
            before = max((f(n) for n in needs), default=(0.0, []))
            finish[name] = (before[0] + seconds, before[1] + [name])
        return finish[name]

    return max(f(n) for n in GRAPH)


def stack_text(root) -> str:
    out = ["version: 1", "settings:", "  destdir: stage", "  jobs: 1", "components:"]
    for name, (seconds, needs) in GRAPH.items():
        out += [f"  {name}:", f"    git: {root}/{name}", "    ref: v1"]
        if needs:
            out.append(f"    needs: [{', '.join(needs)}]")
        out += [f"    build: sleep {seconds} && make", f"    artifacts: [out/{name}]",
                "    install: make install", f"    installs: [$PREFIX/bin/{name}]"]
    return "\n".join(out) + "\n"


def make_upstreams(root) -> None:
    for name in GRAPH:
        repo = Repo(root / name)
        repo.commit({"Makefile": MAKEFILE.replace("NAME", name),
                     ".gitignore": "/out/\n",
                     f"src/{name}.c": f"int {name}(void) {{ return 0; }}\n",
                     "README": f"component {name}\n"}, f"{name} v1", 1_640_000_000, tag="v1")
        repo.finish()


def run(h: Harness, _up: Upstreams | None, reps: int) -> dict:
    root = h.root / "par-upstream"
    make_upstreams(root)
    projects = {}
    for i, mode in enumerate(MODES):
        p = h.root / f"p-par-{i}"
        p.mkdir()
        (p / "stack.yaml").write_text(stack_text(root))
        projects[mode] = p
        if mode.startswith("rebuild"):
            h.doit(p)
    noop = Stats([h.doit(projects["rebuild -n 1"]).seconds for _ in range(3)]).median
    times = {m: [] for m in MODES}
    counts = {m: set() for m in MODES}
    edits = 0
    for rep in range(reps):
        k = rep % len(MODES)
        for mode in MODES[k:] + MODES[:k]:
            p = projects[mode]
            if mode.startswith("fresh"):
                for leftover in ("build", "stage"):
                    remove(p / leftover)
                (p / "stack.lock").unlink(missing_ok=True)
            else:
                edits += 1
                for name in GRAPH:
                    with open(p / "build/src" / name / f"src/{name}.c", "a") as f:
                        f.write(f"/* edit {edits} */\n")
            args = ["-n", "4", "-P", "thread"] if mode.endswith("-n 4") else []
            r = h.doit(p, *args)
            times[mode].append(r.seconds)
            counts[mode].add(len(r.ran))
        print(f"  round {rep + 1}/{reps}: " + ", ".join(
            f"{m} {times[m][-1]:.2f}s" for m in MODES), flush=True)
    return {"times": times, "counts": counts, "noop": noop}


def report(result: dict, reps: int) -> list[str]:
    cp, path = critical_path()
    total = sum(s for s, _ in GRAPH.values())
    lines = ["graph: " + "; ".join(
        f"{n} {s}s" + (f" after {'+'.join(needs)}" if needs else "")
        for n, (s, needs) in GRAPH.items()),
        f"critical path {' -> '.join(path)} = {cp:.2f} s; all builds one after the other "
        f"= {total:.2f} s; a no-op run of this stack takes {result['noop'] * 1000:.0f} ms",
        f"{'mode':16} {'median':>10} {'min':>10} {'max':>10} {'/ path':>7} {'tasks':>6}"]
    for mode, values in result["times"].items():
        s = Stats(values)
        tasks = "/".join(str(c) for c in sorted(result["counts"][mode]))
        lines.append(f"{mode:16} {ms(s.median)} {ms(s.min)} {ms(s.max)} "
                     f"{s.median / cp:6.2f}x {tasks:>6}")
    for mode in ("fresh -n 4", "rebuild -n 4"):
        ratio = Stats(result["times"][mode]).median / cp
        verdict = "meets" if ratio <= TARGET else "MISSES"
        net = (Stats(result["times"][mode]).median - result["noop"]) / cp
        lines.append(f"{mode}: {ratio:.2f}x the critical path, {verdict} the {TARGET}x target "
                     f"({net:.2f}x after taking off the no-op run's fixed cost)")
    lines.append(f"({reps} rounds, interleaved)")
    return lines
