"""What a plain ``doit`` would run now, and why, without running anything.

doit asks a task's up-to-date check only when the task's turn comes, after
its dependencies ran; ``doit list --status`` and ``doit info`` ask before,
and so saw ``build:beta`` as up to date after alpha's ref changed, although
the run rebuilds it once alpha is reinstalled.  In read-only runs (list,
info, help, and the ``status``, ``graph`` and ``show`` tasks) the loader
asks the run's ``Planner`` (``planner(run)``) in place of every check.

A verdict has three values.  A task **will run** when its own check says
so for a reason no dependency's run can undo (a key that changed, an
output missing, no stamp).  It **may run** when it is stale, or could
become stale, only through what a dependency that runs first produces, and
that may come out the same: the condition says what decides.

=================  ==========================  ===========================================
dependency         task                        may run ...
=================  ==========================  ===========================================
``fetch:A``        ``patch:A``                 if the ref names another commit (not known
                                               before fetching, unless stack.lock has it)
``patch:A``        ``build:A``, ``image``      if the patched checkout is another tree
``patch:A``        ``patch:B``                 if A's checkout holds another patch for B
``build:P``        ``install:P``               if the artifacts come out different
``install:P``      what ``needs`` it, the      if the installed content changes
                   image, the configs
``image``          ``config:*``                if the kernel or initrd changes
=================  ==========================  ===========================================

``check`` is a dependency of every build but never part of a key.  A task
that runs only because an output is missing (an installed file deleted)
puts back the same content from the same inputs: the tasks that read only
what it recorded do not follow (a build whose artifact was deleted does
make its install "may run": the install reads the artifacts themselves).
``doit list --status`` and ``doit info`` count "may run" as run: they
only say up to date when it is sure.

``words(check)`` gives a stale check's first reason in the stack's terms
(``ref v1 -> v2``, ``patch patches/x.patch changed``, ``local edits: a.go
(+2 more)``, ``installed file missing: /usr/local/bin/crio``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

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
    """Whether what ``dep`` produces can change ``tid``'s key at all."""
    return kind(dep) != "check"


# The parts of a task's key that a dependency of the given kind produces:
# a key that differs now only in those may be put back by that dependency's
# run (an installed file deleted changes the image's ``programs`` now; the
# install puts it back).  Everything else in a key is final once read.
FED: dict[str, dict[str, tuple[str, ...]]] = {
    "patch": {"patches": ("patch",)},  # a patch read from another component's checkout
    "build": {"source": ("patch",), "needs": ("install",)},
    "image": {"source": ("patch",), "needs": ("install",), "programs": ("install",)},
    "install": {"artifacts": ("build",), "build": ("build",)},
    "config": {"set": ("image", "install", "config"), "base": ("install",)},
}


class Verdict(NamedTuple):
    runs: bool  # will or may run: what doit list --status and info say (conservative)
    why: str
    condition: str = ""  # for a task that may run: what decides, "if ..."

    @property
    def will(self) -> bool:
        return self.runs and not self.condition

    @property
    def may(self) -> bool:
        return self.runs and bool(self.condition)


UP_TO_DATE = Verdict(False, "up to date")


class Planner:
    """Verdicts of every check of one read-only run (``checks``: task id ->
    its check, as the run made them), memoised."""

    def __init__(self, checks: dict[str, state.Check]):
        self.checks = checks
        self.verdicts: dict[str, Verdict] = {}
        self.restores: set[str] = set()  # will run only because an output is missing
        self.decided_by: dict[str, str] = {}  # a task that may run -> the dependency

    def __call__(self, check: state.Check) -> bool:
        v = self.verdict(check.task_id)
        check.reason = v.why
        return not v.runs

    def verdict(self, tid: str) -> Verdict:
        """Will ``tid`` run, may it, or is it up to date; and why."""
        if tid in self.verdicts:
            return self.verdicts[tid]
        check = self.checks.get(tid)
        if check is None:  # a task without a check always runs
            self.verdicts[tid] = Verdict(True, "it has no up-to-date check: it always runs")
            return self.verdicts[tid]
        self.verdicts[tid] = UP_TO_DATE  # (no cycles; be safe)
        running = [d for d in deps(self.checks, tid) if d in self.checks and follows(d, tid)
                   and self.verdict(d).runs]
        ok = check(check.task)  # its own answer, from its key and stamp
        if ok:
            # only a dependency that may make something new can change it
            feeding = [d for d in running if d not in self.restores]
            result = self._may(tid, feeding[0]) if feeding else Verdict(False, check.reason)
        elif check.compared is None and check.stamps.read(tid) is not None:
            # its key cannot be read yet (the ref is not resolved, an
            # artifact is gone): what runs before it decides
            result = self._may(tid, running[0]) if running else Verdict(True, words(check))
        elif check.compared is not None and not state.explain(*check.compared):
            # only a missing output: it puts back what it made
            self.restores.add(tid)
            result = Verdict(True, words(check))
        else:
            by = self._feeder(tid, check, running)
            result = self._may(tid, by) if by else Verdict(True, words(check))
        self.verdicts[tid] = result
        return result

    def _feeder(self, tid: str, check: state.Check, running: list[str]) -> str | None:
        """The running dependency that produces every part of the key that
        changed, if one does (then the task may run); else None."""
        if check.compared is None:
            return None  # never ran: it runs
        old, new = check.compared
        changed = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
        fed = FED.get(kind(tid), {})
        by = None
        for key in changed:
            kinds = fed.get(key, ())
            dep = next((d for d in running if kind(d) in kinds), None)
            if dep is None:
                return None
            by = by or dep
        return by

    def _may(self, tid: str, dep: str) -> Verdict:
        self.decided_by[tid] = dep
        cond = condition(self.checks, dep, tid)
        return Verdict(True, f"may run: {cond} ({self.root(dep)})", cond)

    def root(self, tid: str) -> str:
        """What really changed: the reason of the first task down the chain
        that will run."""
        seen = set()
        while tid in self.decided_by and tid not in seen:
            seen.add(tid)
            tid = self.decided_by[tid]
        return self.verdict(tid).why


def condition(checks: dict[str, state.Check], dep: str, tid: str) -> str:
    """What decides whether ``tid`` runs once ``dep`` ran, in plain words."""
    k = kind(dep)
    if k == "fetch":
        fetch = checks.get(dep)
        ref = fetch.compared[1].get("ref") if fetch is not None and fetch.compared else None
        check = checks.get(tid)
        stamp = check.stamps.read(tid) if check is not None else None
        base = (stamp or {}).get("key", {}).get("base")
        if ref and isinstance(base, str):
            return f"if {ref} names another commit than {base[:12]}"
        return f"if {dep} finds another commit"
    if k == "patch" and kind(tid) == "patch":
        return f"if {dep} changes the patch it reads from {subject(dep)}'s checkout"
    if k == "patch":
        return f"if {dep} gives a different tree"
    if k == "build":
        part = getattr(checks.get(tid), "part", None)
        if part is not None and not getattr(part, "artifacts", True):
            return f"if {dep} ran on other content"
        return f"if {dep}'s artifacts come out different"
    if k == "install":
        return f"if {dep}'s content changes"
    if k == "image":
        return "if the image's kernel or initrd changes"
    return f"if {dep} changes what it writes"


def deps(checks: dict[str, state.Check], tid: str) -> list[str]:
    check = checks.get(tid)
    task = check.task if check is not None else None
    return list(task.task_dep) if task is not None else []


def planner(run) -> Planner:
    """The planner of ``run`` (a ``session.Run``), made on first use."""
    with run.lock:
        if run.planner is None:
            run.planner = Planner(run.checks)
        return run.planner


class Predicted:
    """What a read-only run asks in place of a check (the loader puts it in
    the task's ``uptodate``): the planner's verdict, which follows what a
    dependency that runs first may change.  doit prints it (``doit info``)
    as the check, with the planner's reason."""

    def __init__(self, check: state.Check, planner: Planner):
        self.check = check
        self.planner = planner

    def __call__(self, task=None, values=None) -> bool:
        return self.planner(self.check)

    def __repr__(self) -> str:
        return repr(self.check)


def order(checks: dict[str, state.Check], groups) -> list[str]:
    """The tasks a doit run of ``groups`` (default: plain doit) visits, in
    doit's order: each group's tasks as they were made, dependencies first."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(tid: str) -> None:
        if tid in seen:
            return
        seen.add(tid)
        for dep in deps(checks, tid):
            visit(dep)
        out.append(tid)

    for group in groups:
        for tid in list(checks):
            if tid == group or tid.startswith(group + ":"):
                visit(tid)
    return out


def default_groups(checks: dict[str, state.Check], defaults) -> list[str]:
    """Of the groups a plain doit runs (``loader.DEFAULT_TASKS``), those
    this stack has."""
    return [g for g in defaults if any(t == g or t.startswith(g + ":") for t in checks)]


def would_run(p: Planner, groups) -> list[tuple[str, Verdict]]:
    """(task, verdict) of each task a doit run of ``groups`` will or may
    run, in order."""
    return [(tid, p.verdict(tid)) for tid in order(p.checks, groups) if p.verdict(tid).runs]


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

