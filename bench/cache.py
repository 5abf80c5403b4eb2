"""The shared build cache on the fixture stack (bench/fixtures.py): a fresh
machine with a warm cache against a cold build, and what the pulls moved.

    python bench/cache.py [--rounds N]

Needs docker-registry (tests/registry.py starts one on 127.0.0.1).  Each
round (checkouts made first, untimed: a cache saves builds, not fetches):
machine A builds cold and pushes (push: true), machine C builds cold
with no cache setting (the reference), machine B (fresh workdir and
destdir) installs from A's entries.  Reported: medians of the cold build,
the cold build with pushes, the warm fresh machine, their ratio, and the
parts pulled against the bytes stored in the registry (layers + configs).
Note: the fixture's "builds" are shell scripts that take milliseconds, so
the ratio here is the tool's overhead, the floor of what a real stack with
compilers gains.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests")]

from fixtures import Upstreams, write_stack  # noqa: E402
from harness import Harness  # noqa: E402
from registry import LocalRegistry, available  # noqa: E402


def with_cache(stack: Path, url: str, push: bool) -> None:
    text = stack.read_text()
    setting = f"  cache: {{url: '{url}', push: {str(push).lower()}, plain_http: true}}\n"
    stack.write_text(text.replace("settings:\n", "settings:\n" + setting, 1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    if not available():
        print("docker-registry is not installed", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="kps-cache-bench-"))
    try:
        h = Harness(root)
        up = Upstreams(root / "upstream", scale=args.scale).make()
        rows = {"cold": [], "cold+push": [], "warm": []}
        pulled = stored = 0
        local: list[str] = []
        for n in range(args.rounds):
            reg = LocalRegistry(root / f"registry{n}").start()
            try:
                machines = {}
                for name, cache, push in (("a", True, True), ("c", False, False),
                                          ("b", True, False)):
                    project = root / f"r{n}-{name}"
                    stack = write_stack(project, up)
                    if cache:
                        with_cache(stack, reg.url(), push)
                    machines[name] = project
                for project in machines.values():  # checkouts first: not what a cache saves
                    h.doit(project, "patch")
                rows["cold+push"].append(h.doit(machines["a"], "install").seconds)
                rows["cold"].append(h.doit(machines["c"], "install").seconds)
                warm = h.doit(machines["b"], "install")
                rows["warm"].append(warm.seconds)
                pulled = sum(1 for line in warm.text.splitlines()
                             if ": from cache oci://" in line and "build:" in line)
                local = sorted(line.split(":")[1] for line in warm.text.splitlines()
                               if ": not cached: " in line)
                stored = sum(p.stat().st_size for p in
                             (reg.storage / "docker/registry/v2/blobs").rglob("data"))
            finally:
                reg.stop()
        med = {k: statistics.median(v) for k, v in rows.items()}
        for k, v in rows.items():
            print(f"{k:10} median {med[k]:6.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
        print(f"warm fresh machine / cold build: {med['warm'] / med['cold']:.2f}x")
        print(f"cold build with pushes / cold build: {med['cold+push'] / med['cold']:.2f}x")
        print(f"not cached (built locally on B): {', '.join(local)}")
        print(f"parts pulled: {pulled}; bytes in the registry: {stored} "
              f"({stored / max(pulled, 1) / 1024:.1f} KiB per part)")
        with open("/proc/loadavg") as f:
            print(f"load average after: {f.read().strip()}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
