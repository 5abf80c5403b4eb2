"""What a plain ``doit`` would run now, and why, without running anything.

doit asks a task's up-to-date check only when the task's turn comes, after
its dependencies ran; ``doit list --status`` and ``doit info`` ask before,
and so saw ``build:beta`` as up to date after alpha's ref changed, although
the run rebuilds it once alpha is reinstalled.  In read-only runs (list,
info, help, and the ``status``, ``graph`` and ``show`` tasks) the loader
installs ``predict`` as every check's first step (``state.predict_with``):
a task is stale when its own check says so, or when a dependency will run
and what that dependency produces is part of this task's key:

=================  ==========================  =====================================
dependency         task                        why it follows
=================  ==========================  =====================================
``fetch:A``        ``patch:A``                 the base commit changes
``patch:A``        ``build:A``, ``image``      the checkout moves
``build:P``        ``install:P``               the artifacts are rebuilt
``install:P``      what ``needs`` it           its installed content is in their key
``image``          ``config:*``                the kernel and initrd values
=================  ==========================  =====================================

``check`` is a dependency of every build but never part of a key, and a
``patch:A`` running does not make ``patch:B`` (which reads a patch from
A's checkout) stale: its own check already reads the patch file as it is.
A task that is stale only because an output is missing (an installed
file deleted) puts back the same content: what depends on it does not
follow.  One case is knowable only by building: an install after a build
whose artifacts come out byte-identical is skipped at run time, although
it is predicted here (its reason says so).

``words(check)`` gives a stale check's first reason in the stack's terms
(``ref v1 -> v2``, ``patch patches/x.patch changed``, ``local edits: a.go
(+2 more)``, ``installed file missing: /usr/local/bin/crio``).
"""

from __future__ import annotations

import re

from . import state

# doit's read-only commands and the tasks that only read
READ_ONLY_TASKS = ("status", "graph", "show", "try")


def kind(tid: str) -> str:
    return tid.split(":", 1)[0]


def subject(tid: str) -> str:
    """The component a task is about (``build:kata/agent`` -> ``kata``), or ''."""
    rest = tid.split(":", 1)[1] if ":" in tid else ""
    return rest.split("/", 1)[0] if kind(tid) in ("fetch", "patch", "build", "install") else ""


def follows(dep: str, tid: str) -> bool:
    """Whether ``tid`` must run when its dependency ``dep`` runs."""
    if kind(dep) == "check":
        return False
    if kind(dep) == "patch" and kind(tid) == "patch":
        return False  # a patch source: its file is read as it is now
    return True


class Planner:
    """Verdicts of every check, memoised for one read-only run."""

    def __init__(self):
        self.verdicts: dict[str, tuple[bool, str]] = {}
        self.restores: set[str] = set()  # stale only because an output is missing

    def __call__(self, check: state.Check) -> bool:
        runs, reason = self.verdict(check.task_id)
        check.reason = reason
        return not runs

    def verdict(self, tid: str) -> tuple[bool, str]:
        """(will run, why) for task ``tid``."""
        if tid in self.verdicts:
            return self.verdicts[tid]
        check = state.CHECKS.get(tid)
        if check is None:  # a task without a check always runs
            self.verdicts[tid] = (True, "it has no up-to-date check: it always runs")
            return self.verdicts[tid]
        self.verdicts[tid] = (False, "up to date")  # (no cycles; be safe)
        result = None
        for dep in deps(tid):
            if dep not in state.CHECKS or not follows(dep, tid):
                continue
            runs, _ = self.verdict(dep)
            if runs and dep not in self.restores:
                result = (True, because_of(dep, tid, self.root(dep)))
                break
        if result is None:
            ok = state.own_verdict(check, check.task)
            result = (not ok, words(check) if not ok else check.reason)
            if not ok and check.compared is not None and not state.explain(*check.compared):
                # only a missing output: the task puts back the same content,
                # so nothing downstream changes (an install of the same files)
                self.restores.add(tid)
        self.verdicts[tid] = result
        return result

    def root(self, tid: str) -> str:
        """The first reason down the chain: what really changed."""
        runs, reason = self.verdict(tid)
        for dep in deps(tid):
            if dep in state.CHECKS and follows(dep, tid) and self.verdict(dep)[0] \
                    and dep not in self.restores:
                return self.root(dep)
        return reason


def because_of(dep: str, tid: str, root: str) -> str:
    if kind(dep) == "install":
        return f"needs {dep.split(':', 1)[1]}, which will be reinstalled ({root})"
    if kind(dep) == "build" and kind(tid) == "install":
        return f"{dep} will run first ({root}); skipped if its artifacts come out the same"
    return f"{dep} will run first ({root})"


def deps(tid: str) -> list[str]:
    check = state.CHECKS.get(tid)
    task = check.task if check is not None else None
    return list(task.task_dep) if task is not None else []


_planner: Planner | None = None


def planner() -> Planner:
    global _planner
    if _planner is None:
        _planner = Planner()
    return _planner


def predict(check: state.Check) -> bool:
    """The predictor read-only runs install (``state.predict_with``)."""
    return planner()(check)


def order(groups) -> list[str]:
    """The tasks a doit run of ``groups`` (default: plain doit) visits, in
    doit's order: each group's tasks as they were made, dependencies first."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(tid: str) -> None:
        if tid in seen:
            return
        seen.add(tid)
        for dep in deps(tid):
            visit(dep)
        out.append(tid)

    for group in groups:
        for tid in list(state.CHECKS):
            if tid == group or tid.startswith(group + ":"):
                visit(tid)
    return out


def default_groups(defaults) -> list[str]:
    """Of the groups a plain doit runs (``loader.DEFAULT_TASKS``), those
    this stack has."""
    return [g for g in defaults if any(t == g or t.startswith(g + ":") for t in state.CHECKS)]


def would_run(groups) -> list[tuple[str, str]]:
    """(task, why) of each task a doit run of ``groups`` would run, in order."""
    p = planner()
    return [(tid, p.verdict(tid)[1]) for tid in order(groups) if p.verdict(tid)[0]]


# --------------------------------------------------------------------------
# Reasons in the stack's words

_MISSING = [
    (re.compile(r"^installed file (.*) is missing$"), r"installed file missing: \1"),
    (re.compile(r"^artifact (.*) is missing$"), r"artifact missing: \1"),
]


def words(check: state.Check) -> str:
    """The first reason a check gave, said the way the stack says it."""
    reason = check.reason
    for pattern, repl in _MISSING:
        if pattern.match(reason):
            return pattern.sub(repl, reason)
    if check.compared is None:
        return reason
    old, new = check.compared
    for key in _KEY_ORDER + sorted(set(old) | set(new)):
        if key in old or key in new:
            if old.get(key) != new.get(key):
                return _changed(key, old.get(key), new.get(key)) or reason
    return reason


_KEY_ORDER = ["git", "ref", "commit", "base", "patches", "source", "build", "needs", "commands",
              "env", "settings", "artifacts", "destdir", "prefix"]


def _short(value) -> str:
    return value[:12] if isinstance(value, str) else str(value)


def _changed(key: str, a, b) -> str | None:
    if key in ("ref", "git"):
        return f"{key} {a} -> {b}"
    if key == "commit":
        if not b:
            return "not resolved in stack.lock"
        return f"stack.lock commit {_short(a)} -> {_short(b)}"
    if key == "base":
        return f"base commit {_short(a)} -> {_short(b)}"
    if key == "patches":
        a, b = dict(map(tuple, a or [])), dict(map(tuple, b or []))
        for name, h in b.items():
            if name not in a:
                return f"patch {name} added"
            if a[name] != h:
                return f"patch {name} changed"
        for name in a:
            if name not in b:
                return f"patch {name} removed"
        return "the patch series was reordered"
    if key == "source":
        a, b = a or {}, b or {}
        ea, eb = a.get("edits", {}), b.get("edits", {})
        edited = sorted(p for p in set(ea) | set(eb) if ea.get(p) != eb.get(p))
        if edited:
            more = f" (+{len(edited) - 1} more)" if len(edited) > 1 else ""
            return f"local edits: {edited[0]}{more}"
        return "the checkout holds another tree"
    if key == "build":  # an install without artifacts: what its build ran on
        a, b = a or {}, b or {}
        if a.get("content") != b.get("content"):
            return "the checkout's content changed"
        for sub in ("needs", "commands", "env", "settings"):
            if a.get(sub) != b.get(sub):
                return _changed(sub, a.get(sub), b.get(sub)) if sub == "needs" \
                    else f"the build's {sub} changed"
    if key == "needs":
        a, b = a or {}, b or {}
        for part in sorted(set(a) | set(b)):
            if a.get(part) != b.get(part):
                return f"needs {part}, which was reinstalled"
    if key == "artifacts":
        a, b = a or {}, b or {}
        for art in sorted(set(a) | set(b)):
            if a.get(art) != b.get(art):
                return f"artifact {art} changed"
    if key in ("commands", "env", "settings", "destdir", "prefix"):
        return f"{key} changed"
    lines = state.explain({key: a} if a is not None else {}, {key: b} if b is not None else {})
    return lines[0] if lines else None


def edits_of(check: state.Check | None) -> list[str] | None:
    """The local edits a build check saw (our own build outputs left out)."""
    if check is None or check.compared is None:
        return None
    source = check.compared[1].get("source")
    return sorted(source.get("edits", {})) if isinstance(source, dict) else None

