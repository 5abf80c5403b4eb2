"""Running doit and the floor commands the way a user would, and timing them."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fixtures import GIT_ENV, git

ROOT = Path(__file__).resolve().parents[1]
DODO = ROOT / "dodo.py"
# The libraries the tool imports (the issue that set the floor also counted
# sh, which the tool no longer uses: a floor 25 ms lower, a stricter ratio).
FLOOR_IMPORT = "import doit,pydantic,yaml,tomlkit"


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float
    ran: list[str] = field(default_factory=list)
    uptodate: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.out + self.err


class DoitFailed(RuntimeError):
    pass


class Harness:
    """Everything under ``root``; a HOME of our own (no user gitconfig, no
    fsmonitor or other settings that would change what git does)."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("DESTDIR", "PREFIX", "JOBS", "SRC", "MAKEFLAGS", "MFLAGS",
                            "PYTHONDONTWRITEBYTECODE")
               and not k.startswith("GIT_")}
        env.update(GIT_ENV)
        env["HOME"] = str(self.home)
        # Byte-code is cached as on a user's machine, but kept out of the
        # project's tree (PYTHONDONTWRITEBYTECODE would compile every module
        # on every run).
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        self.env = env

    def doit(self, project: Path, *args: str, expect: int | None = 0,
             python: list[str] | None = None, dodo: Path = DODO) -> Run:
        """The tool on ``project``: this tree's through its entry point, as
        ./stack.sh runs it (``python -m tasks``); another tree's (``dodo``)
        through plain doit, which imports that tree's own tasks."""
        tool = ["-m", "tasks"] if dodo == DODO else ["-m", "doit", "-f", str(dodo)]
        cmd = [*(python or [sys.executable]), *tool, f"stack={project / 'stack.yaml'}", *args]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=project, env=self.env,
                                errors="replace")
        seconds = time.perf_counter() - start
        run = Run(result.returncode, result.stdout, result.stderr, seconds)
        for line in (result.stdout + "\n" + result.stderr).splitlines():
            m = re.match(r"^(\.  |-- )(\S+)$", line)
            if m:
                (run.ran if m.group(1) == ".  " else run.uptodate).append(m.group(2))
        if expect is not None and run.code != expect:
            raise DoitFailed(f"doit {' '.join(args)} in {project} exited {run.code}\n"
                             f"--- stdout\n{run.out[-3000:]}\n--- stderr\n{run.err[-3000:]}")
        return run

    def floor(self, checkouts: list[Path]) -> float:
        """Import the tool's libraries, then `git status` in each checkout."""
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", FLOOR_IMPORT], check=True, env=self.env)
        for path in checkouts:
            subprocess.run(["git", "-C", str(path), "status"], check=True, env=self.env,
                           stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def checkouts(project: Path) -> list[Path]:
    src = project / "build" / "src"
    return sorted(p for p in src.iterdir() if (p / ".git").exists())


def all_trees(project: Path) -> list[Path]:
    """Every checkout and every checked-out submodule in it."""
    out = []
    for co in checkouts(project):
        out.append(co)
        subs = git(co, "submodule", "foreach", "--quiet", "--recursive", "pwd")
        out.extend(Path(p) for p in subs.splitlines() if p)
    return out


EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class Dance:
    """`git checkout` of another commit and back in every tree: the other
    commit has an empty tree, so every tracked file is removed and written
    again (new mtime, ctime and inode for all of them)."""

    def __init__(self, project: Path):
        self.trees = []
        for tree in all_trees(project):
            git(tree, "hash-object", "-t", "tree", "-w", "/dev/null")  # the empty tree
            empty = git(tree, "commit-tree", EMPTY_TREE, "-m", "empty")
            self.trees.append((tree, empty))

    def __call__(self) -> None:
        for tree, empty in self.trees:  # superprojects come before their submodules
            head = git(tree, "rev-parse", "HEAD")
            git(tree, "checkout", "-q", "--detach", empty)
            git(tree, "checkout", "-q", "--detach", head)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms"
