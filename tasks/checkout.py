"""A checkout as the steps that build from it see it.

What build and image share: the up-to-date check keyed on a checkout's
content (``source_check``), recording the untracked files our own commands
create as build output (``recording_outputs``), running a part's commands in
its checkout, and the installed content of a component, which is part of
the key of whatever ``needs`` it.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

from . import tree
from .action import task_id
from .errors import StackError
from .model import Part
from .run import run
from .state import Check
from .workspace import Workspace


def installed_of(ws: Workspace, need: str) -> dict[str, str]:
    """What each part a ``needs`` entry names (``NAME`` or ``NAME/PART``)
    last installed (a digest), as its install task recorded it."""
    out = {}
    for part in ws.parts_of(need):
        installed = ws.stamps.produced(task_id("install", part.id), "installed")
        if installed is None:
            raise StackError(f"{part.id} is not installed yet")
        out[part.id] = installed
    return out


def content_of(ws: Workspace, component: str, source: dict) -> dict:
    return tree.content(ws.checkout(component), source, ws.outputs(component))


def source_check(ws: Workspace, tid: str, component: str, key, missing,
                 part: Part | None = None) -> Check:
    """The check of a task keyed on ``component``'s checkout content
    (``key()["source"]``): our own build outputs are left out of both sides,
    and a key that differs only because an edit was committed (same files,
    new tree) still matches."""
    return Check(ws.stamps, tid, key, missing, compare=partial(_without_outputs, ws, component),
                 equivalent=partial(_committed, ws, component), part=part)


def _without_outputs(ws: Workspace, component: str, old: dict, new: dict) -> tuple[dict, dict]:
    outputs = ws.outputs(component)
    old = dict(old, source=tree.without_outputs(old.get("source", {}), outputs))
    new = dict(new, source=tree.without_outputs(new["source"], outputs))
    return old, new


def _committed(ws: Workspace, component: str, stamp: dict, now: dict) -> bool:
    """The same files as the stamp's content, now committed."""
    if not stamp.get("content"):
        return False
    old, new = _without_outputs(ws, component, stamp.get("key", {}), now)
    if {k: v for k, v in old.items() if k != "source"} != \
            {k: v for k, v in new.items() if k != "source"}:
        return False
    try:
        return content_of(ws, component, now["source"]) == stamp["content"]
    except StackError:
        return False


@contextmanager
def recording_outputs(ws: Workspace, component: str, before: dict[str, str] | None = None):
    """Untracked files created in the checkout while the block runs are
    recorded as build output (not source edits), even if it fails.
    ``before`` is a scan taken just now (a key's ``source["edits"]``), if any."""
    path = ws.checkout(component)
    cache = ws.hashes(component)
    ws.prefetch.touched(component)
    if before is None:
        _, before = tree.scan(path, cache)
    try:
        yield
    finally:
        ws.prefetch.touched(component)
        _, after = tree.scan(path, cache)
        ws.add_outputs(component, {p for p in tree.untracked(after) if before.get(p) != after[p]})
        cache.save()


def run_commands(ws: Workspace, part: Part, commands, tid: str, sudo=False,
                 before: dict[str, str] | None = None) -> None:
    """Run a part's commands in its checkout, recording what they create."""
    if not commands:
        return
    with recording_outputs(ws, part.component, before):
        for command in commands:
            run(command, cwd=ws.checkout(part.component), log=ws.log(tid),
                env=ws.env(part), sudo=sudo, label=f"{tid}: ")
