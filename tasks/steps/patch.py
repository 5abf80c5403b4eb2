"""patch:NAME: put the checkout at its base commit plus the patch series.

The series is applied to a temporary index and committed (one commit per
patch, so ``git log`` in the checkout shows what was applied); only when all
of it applies does HEAD move, in one ``git checkout``.  A series that does
not apply leaves the checkout clean at its base commit, with no .rej or
.orig files.  A checkout with local edits is never moved.  A move that was
interrupted (the process killed mid-checkout) is detected from a marker file
and finished cleanly by the next run.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial

from .. import git
from ..action import ids, step, task_id
from ..errors import PatchFailed, StackError
from ..model import Component
from ..run import say
from ..state import Check
from ..workspace import Workspace


def patch_bytes(ws: Workspace, c: Component) -> list[tuple[str, bytes]]:
    """(name shown to the user, content) of each patch, in order."""
    out = []
    for p in c.patches:
        if p.component is None:
            file, shown = p.file, str(p.file)
        else:
            file = ws.checkout(p.component) / p.path
            shown = f"{p.path} (in {p.component}'s checkout)"
        try:
            out.append((shown, file.read_bytes()))
        except FileNotFoundError:
            raise PatchFailed(f"{c.name}: patch {shown} not found") from None
        except OSError as err:
            raise PatchFailed(f"{c.name}: cannot read patch {shown}: {err.strerror}") from None
    return out


def patch_key(ws: Workspace, c: Component) -> dict:
    base = ws.lockfile.commit_for(c.name, c.git, c.ref)
    if base is None:
        raise StackError("the ref is not resolved yet (fetch has not run)")
    series = [[name, hashlib.sha256(data).hexdigest()[:24]] for name, data in patch_bytes(ws, c)]
    return {"base": base, "patches": series, "submodules": _jsonable(c.submodules)}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def patch_missing(ws: Workspace, c: Component) -> str | None:
    if ws.marker(c.name).exists():
        return "a previous move of the checkout was interrupted"
    if git.head(ws.checkout(c.name)) is None:
        return "the checkout has no commit checked out (was it removed?)"
    return None


def _uptodate(ws: Workspace, c: Component) -> Check:
    """Stale when the base commit or any patch's content changes."""
    return Check(ws.stamps, task_id("patch", c.name), partial(patch_key, ws, c),
                 partial(patch_missing, ws, c))


def _recover(ws: Workspace, c: Component, log, label) -> None:
    """Finish a checkout move that was killed half-way: back to where it
    started, exactly (tracked files restored, files it had added removed)."""
    marker = ws.marker(c.name)
    if not marker.exists():
        return
    move = marker.read()
    if not isinstance(move.get("from"), str) or not isinstance(move.get("to"), str):
        marker.clear()  # damaged: nothing to finish
        return
    path = ws.checkout(c.name)
    say(f"  {label}finishing an interrupted checkout move ({move['from'][:12]} -> "
        f"{move['to'][:12]})")
    git.clear_stale_locks(path, ws.started + 1)
    git.reset_hard(path, move["from"], log, label)
    for leftover in git.paths_only_in(path, move["to"], move["from"]):
        # Added by the interrupted checkout of "to"; the tree was clean before.
        try:
            os.unlink(path / leftover)
        except (FileNotFoundError, IsADirectoryError):
            pass
    marker.clear()


def _patch(ws: Workspace, c: Component) -> dict:
    ws.prefetch.touched(c.name)
    try:
        return _patch_checkout(ws, c)
    finally:
        ws.prefetch.touched(c.name)


def _patch_checkout(ws: Workspace, c: Component) -> dict:
    path = ws.checkout(c.name)
    tid = task_id("patch", c.name)
    log = ws.log(tid)
    label = f"{tid}: "
    key = patch_key(ws, c)
    base = key["base"]
    git.clear_stale_locks(path, ws.started)
    _recover(ws, c, log, label)
    # Where we last put HEAD: kept apart from the stamp, which a failed run
    # clears, to tell our own patched commits from the user's.
    previous = ws.head_record(c.name).read()
    current = git.head(path)
    outputs = ws.outputs(c.name)

    try:
        target = git.apply_series(path, base, patch_bytes(ws, c), scratch=ws.scratch(),
                                  upstream=f"{c.ref} ({base[:12]})")
    except PatchFailed as err:
        if current != base and not [e for e in git.local_edits(path) if e not in outputs]:
            _move(ws, c, current, base, log, label)
        raise PatchFailed(
            f"{c.name}: {err.message}",
            hint="fix or drop the patch in stack.yaml (the checkout was left clean at its base "
                 f"commit {base[:12]}), then run doit again") from None

    if current != target:
        why = ("its pin or patch series changed" if previous.get("head") else
               "it must be put at its pinned commit")
        mine = git.local_commits(path, previous.get("head") or base) \
            if current and current != base else None
        if mine and not mine.kept:  # (doit status says the same: steps/status.py)
            more = f"\n  ... and {len(mine.lines) - 10} more" if len(mine.lines) > 10 else ""
            raise PatchFailed(f"{c.name}: {why}, but {mine.said(c.ref)}:\n  "
                              + "\n  ".join(mine.lines[:10]) + more, hint=mine.hint())
        if current:
            git.refuse_if_edited(path, c.name, why, ignore=outputs)
        # (a new checkout's unborn branch is not the user's)
        branch = git.branch(path) if current else None
        _move(ws, c, current, target, log, label)
        if branch:
            say(f"  {label}the checkout was on your branch '{branch}' (kept, not built); "
                f"it is now at the pinned, patched commit")
    if c.submodules:
        git.update_submodules(path, log, label, c.submodules)
    applied = len(c.patches)
    say(f"  {label}{c.ref} ({base[:12]})" + (f" + {applied} patch(es) = {target[:12]}"
                                              if applied else ""))
    ws.head_record(c.name).write({"head": target})
    return key


def _move(ws: Workspace, c: Component, current: str | None, target: str, log, label) -> None:
    path = ws.checkout(c.name)
    marker = ws.marker(c.name)
    if current:
        marker.write({"from": current, "to": target})
    git.switch(path, target, log, label)
    if current:
        marker.clear()


def tasks(ws: Workspace):
    for c in ws.stack.components.values():
        deps = [task_id("fetch", c.name)] + ids("patch", (o for o in c.patch_sources()
                                                          if o != c.name))
        yield {
            "name": c.name,
            "doc": f"check out {c.name} at {c.ref}"
                   + (f" and apply {len(c.patches)} patch(es); reruns when the base commit "
                      "or a patch's content changes (wherever the patch lives)" if c.patches
                      else "; reruns when the base commit changes"),
            "actions": [step(ws, task_id("patch", c.name), lambda c=c: _patch(ws, c))],
            "task_dep": deps,
            "uptodate": [_uptodate(ws, c)],
        }
