"""build:NAME[/PART] and install:NAME[/PART].

A build is keyed on the checkout's content (``tree.source_state``), its
commands and env, the settings its commands name (``$PREFIX``, ``$DESTDIR``;
never ``$JOBS``, which changes speed, not output), and the installed content
of the components it ``needs``.  An install is keyed on the content of the
artifacts, its commands and env, destdir and prefix; it reruns when an
installed file is missing, not because the build merely ran again.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from . import tree
from .action import step
from .errors import StackError
from .run import run
from .stack import Part
from .state import Check, digest
from .workspace import Workspace

_VAR_RE = re.compile(r"\$(?:\{(PREFIX|DESTDIR)\}|(PREFIX|DESTDIR)\b)")


def named_settings(ws: Workspace, commands) -> dict[str, str]:
    """Settings a command names explicitly: they are part of what it builds."""
    names = set()
    for cmd in commands:
        for m in _VAR_RE.finditer(cmd):
            names.add(m.group(1) or m.group(2))
    values = {"PREFIX": ws.settings.prefix, "DESTDIR": ws.settings.destdir}
    return {n: values[n] for n in sorted(names)}


def installed_of(ws: Workspace, name: str) -> dict[str, str]:
    """What each part of component ``name`` last installed (a digest)."""
    out = {}
    for part in ws.component(name).parts:
        stamp = ws.stamps.read(f"install:{part.id}")
        if stamp is None:
            raise StackError(f"{part.id} is not installed yet")
        out[part.id] = stamp.get("installed", "")
    return out


def build_key(ws: Workspace, part: Part, fresh: bool = False) -> dict:
    c = ws.component(part.component)
    source = ws.source_state(c.name, fresh=fresh)
    needs = {}
    for other in c.needs:
        needs.update(installed_of(ws, other))
    return {
        "source": source,
        "commands": list(part.build),
        "env": dict(part.env),
        "settings": named_settings(ws, part.build),
        "needs": needs,
    }


class SourceCheck(Check):
    """A check keyed on a checkout's content (``key()["source"]``): our own
    build outputs are left out of both sides, and a key that differs only
    because an edit was committed (same files, new tree) still matches."""

    component: str

    def compare(self, old: dict, new: dict) -> tuple[dict, dict]:
        outputs = self.ws.outputs(self.component)
        old = dict(old, source=tree.without_outputs(old.get("source", {}), outputs))
        new = dict(new, source=tree.without_outputs(new["source"], outputs))
        return old, new

    def equivalent(self, stamp: dict, now: dict) -> bool:
        if not stamp.get("content"):
            return False
        old, new = self.compare(stamp.get("key", {}), now)
        if {k: v for k, v in old.items() if k != "source"} != \
                {k: v for k, v in new.items() if k != "source"}:
            return False
        try:
            same = content_of(self.ws, self.component, now["source"]) == stamp["content"]
        except StackError:
            return False
        if same:
            self.reason = "up to date (the same files, now committed)"
        return same


def content_of(ws: Workspace, component: str, source: dict) -> dict:
    return tree.content(ws.checkout(component), source, ws.outputs(component))


class BuildCheck(SourceCheck):
    """Stale when the checkout's content, the commands, env or named settings
    change, a needed component was reinstalled differently, or an artifact
    is missing."""

    def __init__(self, ws: Workspace, part: Part):
        super().__init__(ws.stamps, f"build:{part.id}")
        self.ws, self.part, self.component = ws, part, part.component

    def key(self) -> dict:
        return build_key(self.ws, self.part)

    def missing(self) -> str | None:
        root = self.ws.checkout(self.part.component)
        for artifact in self.part.artifacts:
            if not (root / artifact).exists():
                return f"artifact {artifact} is missing"
        return None


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


def run_commands(ws: Workspace, part: Part, commands, task_id: str, sudo=False,
                 before: dict[str, str] | None = None) -> None:
    """Run commands in the checkout, recording what they create."""
    if not commands:
        return
    with recording_outputs(ws, part.component, before):
        for command in commands:
            run(command, cwd=ws.checkout(part.component), log=ws.log(task_id),
                env=ws.env(part), sudo=sudo, label=f"{task_id}: ")


def _build(ws: Workspace, part: Part) -> dict:
    task_id = f"build:{part.id}"
    key = build_key(ws, part, fresh=True)
    content = content_of(ws, part.component, key["source"])
    # The key's fresh scan is the state before the build: no second scan.
    run_commands(ws, part, part.build, task_id, before=key["source"]["edits"])
    root = ws.checkout(part.component)
    missing = [a for a in part.artifacts if not (root / a).exists()]
    if missing:
        raise StackError(
            f"the build finished but did not produce: {', '.join(missing)}",
            hint="check 'artifacts' in stack.yaml against what the build writes "
                 f"(log: {ws.log(task_id)})")
    key["_extra"] = {"content": content}
    return key


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
        super().__init__(ws.stamps, f"install:{part.id}")
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
    task_id = f"install:{part.id}"
    key = install_key(ws, part)
    run_commands(ws, part, part.install, task_id, sudo=ws.needs_sudo())
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
                 f"(log: {ws.log(task_id)})")
    key["_extra"] = {"installed": digest([installed, key["artifacts"]])}
    return key


def build_tasks(ws: Workspace):
    for c in ws.stack.components.values():
        needs = [f"install:{p.id}" for other in c.needs for p in ws.component(other).parts]
        for part in c.parts:
            yield {
                "name": part.id,
                "doc": f"build {part.id}" + (f" (after {', '.join(c.needs)})" if c.needs else ""),
                "actions": [step(ws, f"build:{part.id}", lambda p=part: _build(ws, p))],
                "task_dep": ["check", f"patch:{c.name}"] + needs,
                "uptodate": [BuildCheck(ws, part)],
                "verbosity": 2,
            }


def install_tasks(ws: Workspace):
    for c in ws.stack.components.values():
        for part in c.parts:
            where = ws.settings.destdir or "the live system"
            yield {
                "name": part.id,
                "doc": f"install {part.id} into {where}",
                "actions": [step(ws, f"install:{part.id}", lambda p=part: _install(ws, p))],
                "task_dep": [f"build:{part.id}"],
                "uptodate": [InstallCheck(ws, part)],
                "verbosity": 2,
            }
