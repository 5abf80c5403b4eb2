"""fetch:NAME, update:NAME and reset:NAME.

``fetch`` brings the pinned commit's objects into ``<workdir>/src/NAME``
(created on first use, fetched into afterwards: a re-pin never re-clones)
and records the commit in stack.lock.  It does not touch the work tree; the
patch step does.  A locked commit already present needs no network at all.
"""

from __future__ import annotations

import time
from functools import partial

from .. import git
from ..action import step, task_id
from ..errors import GitError
from ..model import Component
from ..run import say
from ..state import Check
from ..workspace import Workspace


def fetch_key(ws: Workspace, c: Component) -> dict:
    return {
        "git": c.git,
        "ref": c.ref,
        "submodules": list(c.submodules) if isinstance(c.submodules, tuple) else c.submodules,
        "depth": c.depth,
        "commit": ws.lockfile.commit_for(c.name, c.git, c.ref),
    }


def fetch_missing(ws: Workspace, c: Component) -> str | None:
    if not git.is_repo(ws.checkout(c.name)):
        return f"checkout {ws.checkout(c.name)} is missing"
    return None


def _uptodate(ws: Workspace, c: Component) -> Check:
    """Stale when git, ref, submodules or depth change, when stack.lock moves
    the commit, or when the checkout is gone."""
    return Check(ws.stamps, task_id("fetch", c.name), partial(fetch_key, ws, c),
                 partial(fetch_missing, ws, c))


def resolve_and_fetch(ws: Workspace, c: Component) -> str:
    """Make sure the commit for ``c.ref`` is present; return it."""
    path = ws.checkout(c.name)
    tid = task_id("fetch", c.name)
    log = ws.log(tid)
    label = f"{tid}: "
    git.clear_stale_locks(path, ws.started)
    new = git.ensure_repo(path, c.git, log, label)
    locked = ws.lockfile.commit_for(c.name, c.git, c.ref)
    if locked and not new and git.has_commit(path, locked):
        return locked
    if git.HEX40.match(c.ref) and not new and git.has_commit(path, c.ref):
        return c.ref
    try:
        remote = git.ls_remote(path, c.ref)
    except GitError:
        # Offline?  A ref fetched before still names what it named then.
        remote = git.local_ref(path, c.ref) if not locked else None
        if remote is None:
            raise
        say(f"  {label}origin cannot be reached; using '{c.ref}' as last fetched "
            f"({remote.commit[:12]})")
        return remote.commit
    if remote is None and not git.HEXISH.match(c.ref):
        raise GitError(
            f"{c.name}: ref '{c.ref}' not found at {c.git}",
            hint="check the tag, branch or commit name in stack.yaml")
    if locked and remote is not None and remote.commit != locked:
        if remote.is_tag:
            raise GitError(
                f"{c.name}: tag '{c.ref}' now points to {remote.commit} upstream, "
                f"but stack.lock has {locked}",
                hint=f"if the tag was moved on purpose, run 'doit {task_id('update', c.name)}' "
                     "to take "
                     "the new commit; otherwise keep the lock and ask upstream why")
        if remote.is_branch:
            git.fetch(path, log, label, remote, c.ref, c.depth, first=new)
            if not git.has_commit(path, locked):
                raise GitError(
                    f"{c.name}: branch '{c.ref}' no longer contains the locked commit "
                    f"{locked} (upstream now has {remote.commit})",
                    hint=f"run 'doit {task_id('update', c.name)}' to take the new commit")
            say(f"  {label}branch '{c.ref}' has moved upstream to {remote.commit[:12]}; "
                f"keeping the locked {locked[:12]} ('doit update:{c.name}' takes the new one)")
            return locked
    commit = git.fetch(path, log, label, remote, c.ref, c.depth, first=new)
    if locked and commit != locked:  # an abbreviated commit cannot move; be safe
        raise GitError(f"{c.name}: '{c.ref}' resolved to {commit}, stack.lock has {locked}")
    return commit


def _fetch(ws: Workspace, c: Component) -> dict:
    ws.prefetch.touched(c.name)
    commit = resolve_and_fetch(ws, c)
    ws.lockfile.record(c.name, c.git, c.ref, commit, keep=set(ws.stack.components))
    say(f"  {task_id('fetch', c.name)}: {c.ref} is {commit[:12]}")
    return fetch_key(ws, c)


def _update(ws: Workspace, c: Component) -> None:
    """Re-resolve a moving ref (tag or branch) against upstream, on purpose."""
    path = ws.checkout(c.name)
    tid = task_id("update", c.name)
    log, label = ws.log(tid), f"{tid}: "
    git.ensure_repo(path, c.git, log, label)
    old = ws.lockfile.commit_for(c.name, c.git, c.ref)
    remote = git.ls_remote(path, c.ref)
    if remote is None:
        if git.HEXISH.match(c.ref):
            say(f"  {label}'{c.ref}' is a commit: nothing to update")
            return None
        raise GitError(f"{c.name}: ref '{c.ref}' not found at {c.git}")
    if not remote.refname:
        say(f"  {label}'{c.ref}' is a commit: nothing to update")
        return None
    git.fetch(path, log, label, remote, c.ref, c.depth)
    ws.lockfile.record(c.name, c.git, c.ref, remote.commit, keep=set(ws.stack.components))
    if old == remote.commit:
        say(f"  {label}{c.ref} is still {remote.commit[:12]}")
    else:
        say(f"  {label}{c.ref}: {old[:12] if old else '(not locked)'} -> {remote.commit[:12]}")
    return None


def _reset(ws: Workspace, c: Component) -> None:
    """Put a checkout back to its patched state; local edits go to a stash."""
    ws.prefetch.touched(c.name)
    path = ws.checkout(c.name)
    tid = task_id("reset", c.name)
    log, label = ws.log(tid), f"{tid}: "
    if not git.is_repo(path):
        say(f"  {label}no checkout yet: nothing to reset")
        return None
    git.clear_stale_locks(path, ws.started)
    outputs = ws.outputs(c.name)
    edits = [e for e in git.local_edits(path) if e not in outputs]
    if edits:
        message = f"kata-passt-stack reset:{c.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        git.stash(path, log, label, message)
        say(f"  {label}{len(edits)} edited path(s) saved in the stash '{message}'; "
            f"'git -C {path} stash pop' brings them back")
    else:
        say(f"  {label}no local edits")
    # The next run re-applies the patch series and rebuilds from it.
    ws.stamps.clear(task_id("patch", c.name))
    return None


def _per_component(ws: Workspace, kind: str, work, doc, check=None):
    """One task ``KIND:NAME`` per component."""
    for c in ws.stack.components.values():
        task = {"name": c.name, "doc": doc(c),
                "actions": [step(ws, task_id(kind, c.name), lambda c=c: work(ws, c))]}
        if check is not None:
            task["uptodate"] = [check(ws, c)]
        yield task


def tasks(ws: Workspace):
    yield from _per_component(
        ws, "fetch", _fetch,
        lambda c: f"fetch {c.name} {c.ref} from {c.git}; reruns when git, ref, submodules or "
                  "depth change, stack.lock moves the commit, or the checkout is gone",
        _uptodate)


def update_tasks(ws: Workspace):
    yield from _per_component(
        ws, "update", _update,
        lambda c: f"re-resolve {c.name} {c.ref} upstream and record it in stack.lock")


def reset_tasks(ws: Workspace):
    yield from _per_component(
        ws, "reset", _reset,
        lambda c: f"stash local edits in {c.name}'s checkout so the patch step can move it")
