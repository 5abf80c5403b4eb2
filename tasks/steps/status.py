"""status: one line per component (and part) and what a plain doit would run.

Read-only (the loader runs a command line naming only status, graph, show
or try without the lock, the database or any write): the verdicts come from
``tasks/plan.py``, which asks every task's own up-to-date check and follows
what a dependency that runs may change, so the list below the lines holds
every task a plain ``doit`` runs: those that will, and those that may (a
task downstream of one whose output may come out the same), each counted
apart.  A checkout holding commits of the user's is named, with what the
patch step will do about them when it runs.
"""

from __future__ import annotations

import time

from .. import git, loader, plan
from ..action import Report, task_id
from ..errors import StackError
from ..state import JsonFile
from ..workspace import Workspace


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "(not resolved)"


def _verdict(ws: Workspace, tid: str) -> plan.Verdict | None:
    return plan.planner(ws.run).verdict(tid) if tid in ws.run.checks else None


def _first(ws: Workspace, tids) -> str:
    verdicts = [v for v in (_verdict(ws, t) for t in tids) if v is not None]
    for v in verdicts:
        if v.will:
            return f"stale: {v.why}"
    for v in verdicts:
        if v.may:
            return v.why
    return "up to date"


def _commits(ws: Workspace, c) -> git.LocalCommits | None:
    """Commits of the user's in the checkout, on top of where the patch step
    last put HEAD (``ws.head_record``; before any
    record, the base it applied the series to)."""
    since = ws.head_record(c.name).read().get("head") or \
        (ws.stamps.read(task_id("patch", c.name)) or {}).get("key", {}).get("base")
    return git.local_commits(ws.checkout(c.name), since if isinstance(since, str) else None)


def _commits_note(c, commits: git.LocalCommits, patch: plan.Verdict | None) -> list[str]:
    """What the run will do about them (steps/patch.py does it, in the same
    words); nothing to say while the patch step does not run (they are
    built as the checkout's content)."""
    tid = task_id("patch", c.name)
    if patch is None or not patch.runs:
        return []
    when = f"{tid} will" if patch.will else f"if {tid} runs, it will"
    if commits.kept:
        return [f"{c.name}: {commits.said(c.ref)}: {when} move the checkout to {c.ref}; "
                "they stay there, not built"]
    return [f"{c.name}: {commits.said(c.ref)}: {when} refuse to move it, and the run stops "
            "there", f"  Hint: {commits.hint()}"]


def _done(ws: Workspace, tid: str, what: str) -> str:
    stamp = ws.stamps.read(tid)
    if not stamp:
        return f"not {what}"
    return f"{what} (from cache)" if stamp.get("from_cache") else what


def lines(ws: Workspace, notes: list[str] | None = None) -> list[str]:
    """One line per component and part; ``notes`` gets what must be said
    below them (local commits)."""
    rows = []
    for c in ws.stack.components.values():
        fetch, patch = task_id("fetch", c.name), task_id("patch", c.name)
        for tid in (fetch, patch):
            _verdict(ws, tid)
        commit = ws.lockfile.commit_for(c.name, c.git, c.ref)
        if not commit:
            was = (ws.stamps.read(fetch) or {}).get("key", {}).get("commit")
            shown = "(not resolved" + (f"; was {was[:12]})" if was else ")")
        else:
            shown = _short(commit)
        npatch = len(c.patches)
        if npatch:
            pv = _verdict(ws, patch)
            applied = ws.stamps.read(patch) is not None and pv is not None and not pv.will
            patches = f"{npatch} patch(es) " + ("applied" if applied else "not applied")
        else:
            patches = "no patches"
        parted = any(p.name for p in c.parts)
        builds = [task_id("build", p.id) for p in c.parts]
        for tid in builds:
            _verdict(ws, tid)
        edits = None
        for tid in builds:
            check = ws.run.checks.get(tid)
            if check is not None and check.compared is None:
                check(check.task)  # its own key names the edits
            edits = plan.edits_of(check)
            if edits is not None:
                edits = [e for e in edits if e not in ws.outputs(c.name)]
                break
        if edits is None and ws.checkout(c.name).is_dir():
            try:
                found = ws.source_state(c.name)["edits"]
                edits = [e for e in found if e not in ws.outputs(c.name)]
            except StackError:
                pass
        nedits = "edits: ?" if edits is None else f"{len(edits)} local edit(s)"
        commits = _commits(ws, c) if git.is_repo(ws.checkout(c.name)) else None
        if commits:
            nedits += f", {len(commits.lines)} local commit(s)"
            if notes is not None:
                notes += _commits_note(c, commits, _verdict(ws, patch))
        head = [c.name, f"{c.ref} @ {shown}", patches, nedits]
        own = [fetch, patch]
        if not parted:
            part = c.parts[0]
            b, i = task_id("build", part.id), task_id("install", part.id)
            head.append(f"{_done(ws, b, 'built')}, {_done(ws, i, 'installed')}")
            own += [b, i]
        else:
            head.append("")
        rows.append((head, _first(ws, own)))
        if parted:
            for part in c.parts:
                b, i = task_id("build", part.id), task_id("install", part.id)
                rows.append(([f"  {part.id}", "", "", "",
                              f"{_done(ws, b, 'built')}, {_done(ws, i, 'installed')}"],
                             _first(ws, [b, i])))
    widths = [max(len(r[0][n]) for r in rows) for n in range(5)] if rows else []
    out = []
    for cells, why in rows:
        text = "  ".join(cell.ljust(widths[n]) for n, cell in enumerate(cells))
        out.append(f"{text}  {why}".rstrip())
    return out


def smoke_lines(ws: Workspace) -> list[str]:
    """The last smoke's result (``state/smoke.json``, written by
    steps/smoke.py) and whether ``doit smoke`` would run it again."""
    if ws.stack.smoke is None:
        return []
    record = ws.json("smoke").read()
    verdict = _verdict(ws, task_id("smoke"))
    if not record:
        return ["smoke: never ran (doit smoke runs it)"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("when", 0)))
    took = f"{record.get('seconds', 0)} s"
    if record.get("passed"):
        now = "up to date" if verdict is None or not verdict.runs else \
            f"doit smoke would run it again: {verdict.why}"
        out = [f"smoke: passed {when} ({took}); {now}"]
    else:
        out = [f"smoke: FAILED {when} ({took}); doit smoke runs it again"]
        out += [f"  {c.get('check')}: {c.get('why')}" for c in record.get("checks", [])
                if isinstance(c, dict) and not c.get("passed")]
    return out + [f"  transcript: {record.get('log')}"]


def bisect_lines(ws: Workspace) -> list[str]:
    """A bisect left unfinished (``<workdir>/bisect/NAME/bisect.json``,
    written by steps/bisect.py): how to resume it or drop it."""
    out = []
    for name in ws.stack.components:
        record = JsonFile(ws.workdir / "bisect" / name / "bisect.json").read()
        if not record or record.get("result"):
            continue
        out.append(f"bisect:{name}: under way, {len(record.get('steps', []))} step(s) done "
                   f"(good={record.get('good_ref')} bad={record.get('bad_ref')}): "
                   f"doit bisect:{name} resumes it, doit bisect:{name} abort=1 drops it")
    return out


def report(ws: Workspace) -> str:
    notes: list[str] = []
    out = lines(ws, notes)
    if notes:
        out += [""] + notes
    extra = smoke_lines(ws) + bisect_lines(ws)
    if extra:
        out += [""] + extra
    todo = plan.would_run(plan.planner(ws.run), default_groups(ws))
    out.append("")
    will = sum(1 for _, v in todo if v.will)
    may = len(todo) - will
    if not todo:
        out.append("a plain doit would run nothing: everything is up to date")
    else:
        more = f", and {may} more may run" if may else ""
        out.append(f"a plain doit would run {will} task(s){more}, in this order:")
        width = max(len(t) for t, _ in todo)
        out += [f"  {t.ljust(width)}  {v.why}" for t, v in todo]
    return "\n".join(out)


def default_groups(ws: Workspace) -> list[str]:
    return plan.default_groups(ws.run.checks, loader.DEFAULT_TASKS)


def task(ws: Workspace) -> dict:
    return {
        "doc": "say, per component, its ref, commit, patches, edits and whether it is built "
               "and installed, and which tasks a plain doit will run and why, and which may "
               "run and on what it depends (writes nothing; reruns every time)",
        "actions": [Report(lambda: report(ws))],
    }
