"""build:NAME[/PART]: run a part's build commands in its checkout.

A build is keyed on the checkout's content (``tree.source_state``), its
commands and env, the settings its commands name (``$PREFIX``, ``$DESTDIR``;
never ``$JOBS``, which changes speed, not output), and the installed content
of the components it ``needs``.
"""

from __future__ import annotations

import re
from functools import partial

from ..action import Done, installs_of, step, task_id
from ..checkout import content_of, installed_of, run_commands, source_check
from ..errors import StackError
from ..model import Component, Part
from ..state import Check
from ..workspace import Workspace


def _cache():
    """The build cache (host/cache/buildcache.py), imported when a build or
    install runs: its registry client costs a no-op ~15 ms to import."""
    from ..host.cache import buildcache

    return buildcache

_VAR_RE = re.compile(r"\$(?:\{(PREFIX|DESTDIR)\}|(PREFIX|DESTDIR)\b)")


def named_settings(ws: Workspace, commands) -> dict[str, str]:
    """Settings a command names explicitly: they are part of what it builds."""
    names = set()
    for cmd in commands:
        for m in _VAR_RE.finditer(cmd):
            names.add(m.group(1) or m.group(2))
    values = {"PREFIX": ws.settings.prefix, "DESTDIR": ws.settings.destdir}
    return {n: values[n] for n in sorted(names)}


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


def build_missing(ws: Workspace, part: Part) -> str | None:
    tid = task_id("build", part.id)
    if ws.stamps.produced(tid, "from_cache"):
        # a cache hit built no artifact: the pulled tree is what counts
        if not _cache().kept(ws, part).is_dir():
            return "the tree pulled from the build cache is missing"
        pulled = ws.stamps.produced(tid, "cache_key") or {}
        if pulled.get("install") != _cache().install_inputs(ws, part):
            return "the install changed since its tree was pulled from the build cache"
        return None
    root = ws.checkout(part.component)
    for artifact in part.artifacts:
        if not (root / artifact).exists():
            return f"artifact {artifact} is missing"
    return None


def _uptodate(ws: Workspace, part: Part) -> Check:
    """Stale when the checkout's content, the commands, env or named settings
    change, a needed component was reinstalled differently, or an artifact
    is missing."""
    return source_check(ws, task_id("build", part.id), part.component,
                        partial(build_key, ws, part), partial(build_missing, ws, part), part)


def _build(ws: Workspace, part: Part) -> dict:
    tid = task_id("build", part.id)
    key = build_key(ws, part, fresh=True)
    content = content_of(ws, part.component, key["source"])
    cache_key, why = _cache().key_for(ws, part, content)
    if why:
        _cache().note(ws, tid, f"{tid}: not cached: {why}")
    if cache_key:
        hit = _cache().fetch(ws, part, cache_key)
        if hit:
            return Done(key, {"content": content, "cache_key": cache_key, "from_cache": hit})
    # The key's fresh scan is the state before the build: no second scan.
    run_commands(ws, part, part.build, tid, before=key["source"]["edits"])
    root = ws.checkout(part.component)
    missing = [a for a in part.artifacts if not (root / a).exists()]
    if missing:
        raise StackError(
            f"the build finished but did not produce: {', '.join(missing)}",
            hint="check 'artifacts' in stack.yaml against what the build writes "
                 f"(log: {ws.log(tid)})")
    return Done(key, {"content": content, **({"cache_key": cache_key} if cache_key else {})})


def _doc(c: Component, part: Part) -> str:
    """What ``doit help build:NAME`` says (one line: doit keeps only the
    first): what runs, and when it reruns, as README's staleness table."""
    runs = "; ".join(" ".join(cmd.split()) for cmd in part.build)
    if len(runs) > 100:  # a configure-and-make script: show:NAME prints it whole
        runs = runs[:80] + f"... (doit show:{c.name} prints it whole)"
    needs = " or ".join(c.needs)
    return (f"build {part.id}" + (f" (after {', '.join(c.needs)})" if c.needs else "")
            + (f": runs {runs}" if runs else ": no build commands")
            + "; reruns when the checkout's content, the commands or env change, a setting "
            "they name ($PREFIX, $DESTDIR) changes"
            + (f", {needs} is reinstalled with other content" if needs else "")
            + ", or an artifact is missing")


def build_tasks(ws: Workspace):
    for c in ws.stack.components.values():
        needs = [t for other in c.needs for t in installs_of(ws, other)]
        for part in c.parts:
            yield {
                "name": part.id,
                "doc": _doc(c, part),
                "actions": [step(ws, task_id("build", part.id), lambda p=part: _build(ws, p))],
                "task_dep": [task_id("check"), task_id("patch", c.name)] + needs,
                "uptodate": [_uptodate(ws, part)],
            }


