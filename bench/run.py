#!/usr/bin/env python3
"""kata-passt-stack benchmarks: wall times, parallel builds, the change matrix.

    python bench/run.py                      everything, 10 rounds
    python bench/run.py --quick --reps 3     a tenth of the files, quicker
    python bench/run.py --only noop,checkout,matrix
    python bench/run.py --workdir /dev/shm/kps-bench --keep
    python bench/run.py --compare REF        this tree's no-op against REF's

Sections for --only: first, noop, checkout, edit, status (the timed runs; the
floor is always measured with them, and the no-op with status), matrix,
parallel, profile (where a no-op's time goes: -X importtime and cProfile).
Everything is written under a temporary folder (or --workdir, which must be
new or empty) and removed at the end unless --keep.  No network: the
upstreams are local repositories.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402
import fixtures  # noqa: E402
import matrix  # noqa: E402
import parallel  # noqa: E402
import profile_noop  # noqa: E402
import timing  # noqa: E402
from harness import Harness  # noqa: E402

SECTIONS = ["first", "noop", "checkout", "edit", "status", "matrix", "parallel"]
ALL = SECTIONS + ["profile"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10, help="rounds of each timed case (10)")
    ap.add_argument("--quick", action="store_true", help="a tenth of the files in each tree")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections among {','.join(ALL)}")
    ap.add_argument("--workdir", help="work here instead of a temporary folder")
    ap.add_argument("--keep", action="store_true", help="leave the work folder behind")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--compare", metavar="REF",
                    help="time this tree's no-op against commit REF's, side by side "
                         "(only that section runs)")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.compare:
        only = {"compare"}
    unknown = only - set(ALL) - {"compare"}
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    if args.workdir:
        root = Path(args.workdir).absolute()
        if root.exists() and any(root.iterdir()):
            ap.error(f"{root} is not empty")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="kps-bench-"))
    try:
        return bench(root, args, only)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def bench(root: Path, args, only: set[str]) -> int:
    h = Harness(root)
    scale = 0.1 if args.quick else 1.0
    print(f"kata-passt-stack benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"  {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"git {git_version()}, work folder {root}")
    print(f"  kata-passt-stack at {revision()}")
    print(f"  load average at start: {load()}")
    start = time.perf_counter()
    up = None
    if only & {"first", "noop", "checkout", "edit", "status", "matrix", "profile", "compare"}:
        up = fixtures.Upstreams(root / "upstream", scale=scale).make()
        print(f"  fixture upstreams made in {time.perf_counter() - start:.1f} s "
              f"(scale {scale})")
    out: dict = {}
    sections = []
    timed = only & set(timing.LABELS)
    if timed:
        print(f"\n== timed runs: {', '.join(sorted(timed))} ==", flush=True)
        res = timing.run(h, up, args.reps, timed)
        out["timing"] = {"times": res["times"]}
        sections.append(("Wall times", timing.report(res, args.reps) + [f"load: {load()}"]))
    if "parallel" in only:
        print("\n== parallel ==", flush=True)
        res = parallel.run(h, up, args.reps)
        out["parallel"] = {"times": res["times"], "noop": res["noop"]}
        sections.append(("Parallel builds", parallel.report(res, args.reps) + [f"load: {load()}"]))
    if "compare" in only:
        print(f"\n== no-op against {args.compare} ==", flush=True)
        res = compare.run(h, up, args.reps, args.compare)
        out["compare"] = {"times": res["times"], "ref": res["described"]}
        sections.append(("No-op side by side", compare.report(res, args.reps)
                         + [f"load: {load()}"]))
    if "matrix" in only:
        print("\n== change matrix ==", flush=True)
        res = matrix.run(h, up)
        out["matrix"] = [{"change": r["change"].name, "expected": sorted(r["change"].expected),
                          "ran": sorted(r["ran"]), "again": r["again"], "error": r["error"]}
                         for r in res["rows"]]
        sections.append(("Change matrix", matrix.report(res)))
    if "profile" in only:
        print("\n== profile of a no-op ==", flush=True)
        sections.append(("Where a no-op's time goes", profile_noop.run(h, up)))

    for title, lines in sections:
        print(f"\n## {title}\n")
        for line in lines:
            print(line)
    print(f"\n(total {time.perf_counter() - start:.0f} s; load average at the end: {load()})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def revision() -> str:
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tasks",
                            "dodo.py"], capture_output=True, text=True).stdout.strip()
    return head + (" (tasks/ or dodo.py edited since)" if dirty else "")


def git_version() -> str:
    return subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.split()[-1]


if __name__ == "__main__":
    sys.exit(main())
