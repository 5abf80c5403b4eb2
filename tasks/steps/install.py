"""install:NAME[/PART]: run a part's install commands into its staging
folder, then merge what they staged into the target root.

The commands run with ``DESTDIR`` set to ``<workdir>/stage/PART`` (made
fresh each time), never as root; every ``installs`` entry must be in the
stage.  ``manifest.merge`` then lays the stage onto ``settings.destdir`` (or
the live system, through sudo when needed) and records what it wrote.

An install is keyed on the content of the artifacts, its commands and env,
destdir and prefix (not the staging path: it is the same for every run); it
reruns when an installed file or its record is missing, not because the
build merely ran again.  A part without ``artifacts`` whose install
commands copy from its checkout has nothing smaller to stand for what it
copies: its key holds what its build last ran on instead (the checkout's content, as the build's
stamp recorded it, and the build's commands, env, settings and needs), so
it reruns after every build that ran on something else (a ref change, an
edit, other build commands) and never leaves the previous version
installed.  That reads a stamp, not the checkout: the no-op does no more.
What it installed (a digest of the ``installs`` files and the artifacts) is
recorded for the builds and the image that ``need`` the component.

Plain ``doit`` (the ``install`` group) ends by naming what components that
left stack.yaml still have on disk (``manifest.leftovers``).
"""

from __future__ import annotations

import os
from functools import partial

from .. import manifest
from ..action import Done, Notice, step, task_id
from ..checkout import recording_outputs
from ..errors import StackError
from ..model import Part
from ..run import run
from ..state import Check, digest
from ..workspace import Workspace


def _cache():
    """The build cache (host/cache/buildcache.py), imported when a build or
    install runs: its registry client costs a no-op ~15 ms to import."""
    from ..host.cache import buildcache

    return buildcache


def _hit(ws: Workspace, part: Part) -> dict | None:
    """The build cache record when build:PART came from the cache."""
    return ws.stamps.produced(task_id("build", part.id), "from_cache")


def built_on(build: dict | None) -> dict | None:
    """What a build ran on, from its stamp: the checkout's content (which,
    unlike the key's ``source``, stays the same when an edit is committed)
    and the rest of its key.  None when the build has no stamp."""
    if not build:
        return None
    rest = {k: v for k, v in build.get("key", {}).items() if k != "source"}
    return {"content": build.get("content"), **rest}


def install_key(ws: Workspace, part: Part) -> dict:
    root = ws.checkout(part.component)
    build = ws.stamps.read(task_id("build", part.id))
    hit = build.get("from_cache") if build else None
    if hit:  # no artifact was built: the pulled tree stands for them
        return {"artifacts": {"from_cache": hit["tree"]}, "commands": list(part.install),
                "env": dict(part.env), "destdir": ws.settings.destdir,
                "prefix": ws.settings.prefix}
    cache = ws.hashes(part.component)
    artifacts = {}
    for artifact in part.artifacts:
        fp = cache.fingerprint(root / artifact)
        if fp == "-":
            raise StackError(f"artifact {artifact} is missing")
        artifacts[artifact] = fp
    cache.save()
    key = {
        "artifacts": artifacts,
        "commands": list(part.install),
        "env": dict(part.env),
        "destdir": ws.settings.destdir,
        "prefix": ws.settings.prefix,
    }
    if not part.artifacts and part.install:
        # its commands install from the checkout: follow what the build ran
        # on (with no install commands nothing is copied from it)
        key["build"] = built_on(build)
    return key


def install_missing(ws: Workspace, part: Part) -> str | None:
    for target in part.installs:
        path = manifest.target(ws, target)
        if not path.exists() and not path.is_symlink():
            return f"installed file {path} is missing"
    if not manifest.record(ws, part.id).exists():
        return "there is no record of what it installed"
    return None


def _uptodate(ws: Workspace, part: Part) -> Check:
    """Stale when an artifact's content, the commands, env, destdir or prefix
    change, or an installed file or the record of the install is missing.
    A part without artifacts is stale too when its build last ran on
    something else than this install did (``built_on``: the checkout's
    content, the build's commands, env, settings or needs), read from the
    build's stamp: the checkout it copies from is not walked."""
    return Check(ws.stamps, task_id("install", part.id), partial(install_key, ws, part),
                 partial(install_missing, ws, part), part=part)


def _install(ws: Workspace, part: Part) -> Done:
    tid = task_id("install", part.id)
    key = install_key(ws, part)
    stage = manifest.fresh_stage(ws, part.id)
    env = {**ws.env(part), "DESTDIR": str(stage)}
    hit = _hit(ws, part)
    if hit:
        _cache().restore(ws, part, hit, stage)
    elif part.install:
        with recording_outputs(ws, part.component):
            for command in part.install:
                run(command, cwd=ws.checkout(part.component), log=ws.log(tid), env=env,
                    label=f"{tid}: ")
    missing = [t for t in part.installs if not os.path.lexists(manifest.on_target(str(stage), t))]
    if missing:
        raise StackError(
            f"the install finished but did not create: {', '.join(missing)} "
            f"(looked for in its staging folder {stage}); nothing was merged",
            hint="check 'installs' in stack.yaml against what the install writes under "
                 f"$DESTDIR (log: {ws.log(tid)})")
    cache = ws.hashes(part.component)
    installed = {t: cache.fingerprint(manifest.on_target(str(stage), t)) for t in part.installs}
    cache.save()
    produced = {"installed": digest([installed, key["artifacts"]])}
    if ws.settings.cache:  # the staged tree's digest: what the parts that need it key on
        produced["tree"] = _cache().tree_digest(stage)
        content = ws.stamps.produced(task_id("build", part.id), "content")
        if content and not hit and ws.settings.cache.push:
            cache_key, _ = _cache().key_for(ws, part, content)  # today's install commands
            if cache_key:
                _cache().share(ws, part, cache_key, stage)
    if hit:
        produced["from_cache"] = hit["manifest"]
    manifest.merge(ws, part.id, stage, tid)
    return Done(key, produced)


def install_tasks(ws: Workspace):
    where = ws.settings.destdir or "the live system"
    yield {
        "name": None,
        "doc": f"install every component (or part): staged, then merged into {where}",
        "teardown": [Notice(lambda: manifest.say_leftovers(ws))],
    }
    for c in ws.stack.components.values():
        for part in c.parts:
            yield {
                "name": part.id,
                "doc": f"install {part.id}: runs "
                       + ("; ".join(" ".join(cmd.split()) for cmd in part.install) or "nothing")
                       + f" into a staging folder, then merges it into {where}; reruns when "
                       + ("an artifact's content" if part.artifacts else
                          "what its build ran on (it installs from the checkout)")
                       + ", the install commands, env, destdir or prefix change, or an "
                         "installed file or the record of what it installed is missing",
                "actions": [step(ws, task_id("install", part.id), lambda p=part: _install(ws, p))],
                "task_dep": [task_id("build", part.id)],
                "uptodate": [_uptodate(ws, part)],
            }
