"""show:NAME: a component as the tool resolved it (like bitbake -e or
spack spec): where it comes from, the commit, the patches and whether each
is applied, env and commands with the variables written out, artifacts,
installs, needs and needed-by, and where its checkout and logs are.
Read-only."""

from __future__ import annotations

import hashlib

from .. import plan, run
from ..action import Report, task_id
from ..model import Component
from ..workspace import Workspace


def _applied(ws: Workspace, c: Component) -> list[str]:
    """One word per patch: applied when the last patch run applied this
    content and the patch task is up to date."""
    stamp = ws.stamps.read(task_id("patch", c.name))
    done = dict(map(tuple, (stamp or {}).get("key", {}).get("patches", [])))
    tid = task_id("patch", c.name)
    v = plan.planner(ws.run).verdict(tid) if tid in ws.run.checks else plan.UP_TO_DATE
    out = []
    for p in c.patches:
        file = p.file if p.component is None else ws.checkout(p.component) / p.path
        shown = p.path if p.component is None else f"{p.path} (in {p.component}'s checkout)"
        try:
            h = hashlib.sha256(file.read_bytes()).hexdigest()[:24]
        except OSError:
            out.append(f"{shown}: missing")
            continue
        name = str(p.file) if p.component is None else shown
        if done.get(name) == h and v.will:
            out.append(f"{shown}: applied, to be re-applied")
        elif done.get(name) == h and v.may:
            out.append(f"{shown}: applied, may be re-applied ({v.condition})")
        elif done.get(name) == h:
            out.append(f"{shown}: applied")
        else:
            out.append(f"{shown}: not applied")
    return out


def _said(ws: Workspace, tid: str) -> str:
    """A task's verdict: would run (why), may run (if ...), or up to date."""
    if tid not in ws.run.checks:
        return "would run: ?"
    v = plan.planner(ws.run).verdict(tid)
    return v.why if v.may else f"would run: {v.why}" if v.runs else "up to date"


def report(ws: Workspace, name: str) -> str:
    c = ws.component(name)
    commit = ws.lockfile.commit_for(c.name, c.git, c.ref)
    needed_by = [o.name for o in ws.stack.components.values()
                 if any(n.split("/")[0] == name for n in o.needs)]
    subs = ", ".join(c.submodules) if isinstance(c.submodules, tuple) else c.submodules
    out = [f"{c.name}  ({ws.stack.path.name} line {c.line})",
           f"  git:        {c.git}",
           f"  ref:        {c.ref}",
           f"  commit:     {commit or '(not resolved yet: doit fetch:' + name + ')'}",
           f"  submodules: {subs}",
           f"  depth:      {c.depth}",
           f"  checkout:   {run.shown_path(ws.checkout(c.name))}",
           f"  needs:      {', '.join(c.needs) or '-'}",
           f"  needed by:  {', '.join(needed_by) or '-'}",
           f"  patches:    {len(c.patches) or '-'}"]
    out += [f"    {line}" for line in _applied(ws, c)]
    for part in c.parts:
        env = ws.env(part)
        title = f"  part {part.name}" if part.name else "  build and install"
        out.append(title + ":")
        out.append("    env:")
        out += [f"      {k}={v}" for k, v in sorted(env.items())]
        for what, commands in (("build", part.build), ("install", part.install)):
            out.append(f"    {what}:" + ("" if commands else " -"))
            for command in commands:
                out.append(f"      $ {command}")
                if run.expanded(command, env) != command:
                    out.append(f"        = {run.expanded(command, env)}")
        out.append(f"    artifacts:  {', '.join(part.artifacts) or '-'}")
        out.append(f"    installs:   {', '.join(part.installs) or '-'}")
        out.append(f"    requires:   {', '.join(part.requires) or '-'}")
        if ws.settings.cache is not None:  # the artifact it uses or would pull, and its signer
            from ..host.cache import buildcache

            out.append(f"    cache:      {buildcache.provenance(ws, part)}")
        for kind in ("build", "install"):
            tid = task_id(kind, part.id)
            out.append(f"    {tid}: {_said(ws, tid)}  (log: {run.shown_path(ws.log(tid))})")
    for kind in ("fetch", "patch"):
        tid = task_id(kind, c.name)
        out.append(f"  {tid}: {_said(ws, tid)}  (log: {run.shown_path(ws.log(tid))})")
    return "\n".join(out)


def tasks(ws: Workspace):
    yield {"name": None, "doc": "show:NAME prints the component NAME as resolved"}
    for c in ws.stack.components.values():
        yield {
            "name": c.name,
            "doc": f"print {c.name} as resolved: URL, ref, commit, patches (applied or not), "
                   "env and commands expanded, artifacts, installs, needs, needed-by, paths "
                   "(read-only, reruns every time)",
            "actions": [Report(lambda c=c: report(ws, c.name))],
        }
