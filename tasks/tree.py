"""The content state of a checkout, decided from git.

Listing every source file as a doit ``file_dep`` makes each run after a
``git checkout`` re-hash the whole tree, and keeps doing so while the task is
up to date.  Instead the state is the commit's tree (``HEAD^{tree}``: the
same content under a new commit is the same state) plus a content
fingerprint of every path ``git status`` reports as changed or untracked
(the text of ``git status`` alone misses a second edit of an already-edited
file).  Ignored files are build output by definition; untracked files our
own build and install commands created are recorded as outputs and left out
too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import git, session
from .errors import StackError
from .state import HashCache, JsonFile, read_only
from .threads import Jobs

_trees_lock = threading.Lock()


def scan(path: Path, cache: HashCache) -> tuple[str | None, dict[str, str]]:
    """HEAD commit and ``{path: fingerprint}`` of every changed or untracked
    path, submodules included (a submodule's HEAD is ``<path>@``)."""
    head, entries = git.status(path)
    dirty: dict[str, str] = {}
    _collect(path, "", entries, cache, dirty)
    return head, dirty


def _collect(root: Path, prefix: str, entries, cache: HashCache, out: dict) -> None:
    for entry in entries:
        rel = prefix + entry.path
        where = root / entry.path
        if entry.kind == "submodule" and git.is_repo(where):
            sub_head, sub_entries = git.status(where)
            out[rel + "@"] = sub_head or "-"
            _collect(where, rel + "/", sub_entries, cache, out)
        else:
            out[rel] = ("?" if entry.kind == "untracked" else "") + cache.fingerprint(where)


def untracked(dirty: dict[str, str]) -> set[str]:
    return {p for p, fp in dirty.items() if fp.startswith("?")}


class Trees:
    """commit -> tree, remembered on disk (it never changes for a commit)."""

    def __init__(self, file: Path):
        self.file = JsonFile(file)
        self._data: dict[str, str] | None = None

    def tree(self, repo: Path, commit: str) -> str:
        with _trees_lock:
            if self._data is None:
                self._data = self.file.read()
            tree = self._data.get(commit)
        if tree:
            return tree
        tree = git.tree_of(repo, commit)
        with _trees_lock:
            self._data[commit] = tree
            if len(self._data) > 500:
                self._data = dict(list(self._data.items())[-200:])
            if not read_only():
                try:
                    self.file.write(self._data, indent=None, sort_keys=False)
                except OSError:
                    pass  # only a cache
        return tree


def source_state(path: Path, cache: HashCache, trees: Trees,
                 scanned: tuple[str | None, dict[str, str]] | None = None) -> dict:
    """``{"tree": ..., "edits": {path: fingerprint}}`` of a checkout now (or
    as ``scanned`` a moment ago)."""
    if not git.is_repo(path):
        raise StackError(f"checkout {path} is missing")
    head, dirty = scanned if scanned is not None else scan(path, cache)
    cache.save()
    if head is None:
        raise StackError(f"checkout {path} has no commit checked out")
    return {"tree": trees.tree(path, head), "edits": dirty}


class Prefetch:
    """``git status`` of every checkout at once, in threads, the first time
    one is needed: a no-op run then waits for the slowest tree, not for the
    sum of them.  A scan is used only if nothing of ours touched that
    checkout since it started (``touched()`` bumps a generation)."""

    def __init__(self, checkouts: dict[str, Path], caches):
        self.checkouts = checkouts
        self.caches = caches  # name -> HashCache
        self._lock = threading.Lock()
        self._generation: dict[str, int] = {}
        self._pending: dict[str, tuple[int, object]] | None = None
        self._pool = None

    def touched(self, name: str) -> None:
        with self._lock:
            self._generation[name] = self._generation.get(name, 0) + 1

    def start(self) -> None:
        """Start the scans now (the loader does, for a run that looks at
        every checkout, so that git works while doit sets up); otherwise
        the first ``take()`` does."""
        with self._lock:
            if self._pending is None:
                self._start()

    def take(self, name: str):
        """The prefetched scan of ``name`` if still valid, else None."""
        with self._lock:
            if self._pending is None:
                self._start()
            entry = self._pending.get(name)
            generation = self._generation.get(name, 0)
        if entry is None or entry[0] != generation:
            return None
        try:
            result = entry[1].result()
        except Exception:
            return None
        with self._lock:
            if self._generation.get(name, 0) != generation:
                return None
        return result

    def _start(self) -> None:
        self._pending = {}
        names = [n for n, p in self.checkouts.items() if git.is_repo(p)]
        if len(names) < 2:
            return
        # (a new thread starts outside any run: carry the current one)
        self._pool = Jobs([(session.carried(scan), (self.checkouts[name], self.caches(name)))
                           for name in names],
                          workers=(os.cpu_count() or 1) + 1, name="kps-scan")
        for name, job in zip(names, self._pool.jobs, strict=True):
            self._pending[name] = (self._generation.get(name, 0), job)

    def close(self) -> None:
        """Wait for the scans still going (the run ends: no thread of it
        outlives it)."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.join()


def content(path: Path, state: dict, outputs: set[str]) -> dict:
    """What a checkout's files hold, whatever commit they sit on: the tree
    git would write if every change were committed (our build outputs left
    out), plus the submodules' own states.  Committing an edit that was
    built changes ``state`` but not this."""
    edits = state.get("edits", {})
    subs = [k[:-1] for k in edits if k.endswith("@")]

    def in_sub(p: str) -> bool:
        return any(p == s or p.startswith(s + "/") for s in subs)

    files = sorted(p for p, fp in edits.items()
                   if not p.endswith("@") and not in_sub(p) and p not in outputs
                   and fp.lstrip("?") != "d")
    subs_state = {k: v for k, v in edits.items() if k.endswith("@") or in_sub(k)}
    tree = git.tree_with(path, files) if files else state.get("tree")
    return {"tree": tree, "submodules": subs_state}


def without_outputs(state: dict, outputs: set[str]) -> dict:
    """The state with our own build outputs left out (compare like with like:
    both the saved and the current state are filtered by today's outputs)."""
    edits = {p: fp for p, fp in state.get("edits", {}).items() if p not in outputs}
    return {"tree": state.get("tree"), "edits": edits}
