"""install:NAME[/PART]: run a part's install commands.

An install is keyed on the content of the artifacts, its commands and env,
destdir and prefix; it reruns when an installed file is missing, not
because the build merely ran again.  What it installed (a digest of the
``installs`` files and the artifacts) is recorded for the builds and the
image that ``need`` the component.
"""

from __future__ import annotations

from ..action import Done, step, task_id
from ..checkout import run_commands
from ..errors import StackError
from ..model import Part
from ..state import Check, digest
from ..workspace import Workspace


def install_key(ws: Workspace, part: Part) -> dict:
    root = ws.checkout(part.component)
    cache = ws.hashes(part.component)
    artifacts = {}
    for artifact in part.artifacts:
        fp = cache.fingerprint(root / artifact)
        if fp == "-":
            raise StackError(f"artifact {artifact} is missing")
        artifacts[artifact] = fp
    cache.save()
    return {
        "artifacts": artifacts,
        "commands": list(part.install),
        "env": dict(part.env),
        "destdir": ws.settings.destdir,
        "prefix": ws.settings.prefix,
    }


class InstallCheck(Check):
    """Stale when an artifact's content, the commands, env, destdir or prefix
    change, or an installed file is missing."""

    def __init__(self, ws: Workspace, part: Part):
        super().__init__(ws.stamps, task_id("install", part.id))
        self.ws, self.part = ws, part

    def key(self) -> dict:
        return install_key(self.ws, self.part)

    def missing(self) -> str | None:
        for target in self.part.installs:
            path = self.ws.stack.target(target)
            if not path.exists() and not path.is_symlink():
                return f"installed file {path} is missing"
        return None


def _install(ws: Workspace, part: Part) -> dict:
    tid = task_id("install", part.id)
    key = install_key(ws, part)
    run_commands(ws, part, part.install, tid, sudo=ws.needs_sudo())
    cache = ws.hashes(part.component)
    installed = {}
    missing = []
    for target in part.installs:
        path = ws.stack.target(target)
        fp = cache.fingerprint(path)
        if fp == "-":
            missing.append(str(path))
        installed[target] = fp
    cache.save()
    if missing:
        raise StackError(
            f"the install finished but did not create: {', '.join(missing)}",
            hint="check 'installs' in stack.yaml against what the install writes "
                 f"(log: {ws.log(tid)})")
    return Done(key, {"installed": digest([installed, key["artifacts"]])})


def install_tasks(ws: Workspace):
    for c in ws.stack.components.values():
        for part in c.parts:
            where = ws.settings.destdir or "the live system"
            yield {
                "name": part.id,
                "doc": f"install {part.id} into {where}",
                "actions": [step(ws, task_id("install", part.id), lambda p=part: _install(ws, p))],
                "task_dep": [task_id("build", part.id)],
                "uptodate": [InstallCheck(ws, part)],
            }
