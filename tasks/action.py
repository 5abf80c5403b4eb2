"""What every step's doit action does around its own work, and task names.

``step(ws, task_id, work)`` returns a ``StepAction`` for doit that

1. takes the run lock (a second doit on the same workdir refuses at once),
2. removes the task's stamp (a run killed half-way can never look done),
3. starts a fresh log (the previous one is kept as ``.log.1``),
4. runs ``work()``, which returns the key to stamp (or a ``Done`` with what
   the task produced besides), or None for tasks that leave no stamp,
5. writes the stamp, or turns a ``StackError`` into doit's ``TaskFailed``
   naming the task, what failed and the log.

Task ids (``build:cri-o``, ``install:kata-containers/agent``) are made by
``task_id()`` and nowhere else.
"""

from __future__ import annotations

import errno
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from doit.action import BaseAction
from doit.exceptions import TaskFailed

from . import run, session
from .errors import StackError
from .workspace import Workspace


def task_id(kind: str, name: str | None = None) -> str:
    """``kind`` or ``kind:name``: the one spelling of a task's id."""
    return kind if name is None else f"{kind}:{name}"


def ids(kind: str, names) -> list[str]:
    return [task_id(kind, n) for n in names]


def installs_of(ws: Workspace, need: str) -> list[str]:
    """The install tasks a ``needs`` entry names: every part of a
    component (``NAME``), or one part (``NAME/PART``)."""
    return ids("install", (p.id for p in ws.parts_of(need)))


@dataclass
class Done:
    """A finished step: the key it ran for, and what it produced (kept in
    its stamp, read by the tasks that depend on it)."""

    key: dict
    produced: dict = field(default_factory=dict)


class _Quiet(BaseAction):
    """The base of our actions.  Unlike doit's ``PythonAction``, they never
    swap the process-wide ``sys.stdout``/``sys.stderr`` (parallel threads
    doing that race, and leave one thread's stream in place for all): what
    they say goes through ``run.output_to`` into the action's own ``err``,
    and to the stream doit gives it.  Each works for the run it was made in
    (``session.current()`` while the loader makes the tasks), also in the
    thread doit runs it in."""

    def __init__(self, owner: session.Run | None = None):
        self.task = None
        self.out = self.err = self.result = None
        self.values: dict = {}
        self.owner = owner if owner is not None else session.current()

    def _said(self, fn, err):
        """``fn()``'s result, with what it said kept as this action's err."""
        captured = io.StringIO()
        try:
            with session.using(self.owner), run.output_to(captured, err):
                return fn()
        finally:
            self.out, self.err = "", captured.getvalue()


class StepAction(_Quiet):
    """doit's action for a step: lock, stamp cleared, fresh log, the work,
    the stamp written (see the module docstring)."""

    def __init__(self, ws: Workspace, tid: str, work: Callable[[], dict | Done | None]):
        super().__init__(ws.run)
        self.ws, self.tid, self.work = ws, tid, work

    def execute(self, out=None, err=None):
        started = time.monotonic()
        failed = self._said(self._run, err)
        cached = failed is None and bool(self.ws.stamps.produced(self.tid, "from_cache"))
        self.ws.run.ran(self.tid, time.monotonic() - started, failed is None,
                        self.ws.log(self.tid), "ok (from cache)" if cached else "ok")
        return failed

    def _run(self):
        ws, tid = self.ws, self.tid
        try:
            ws.lock()
            ws.stamps.clear(tid)
            run.rotate(ws.log(tid))
            done = self.work()
        except StackError as err:
            full = _full_disk(ws)
            return TaskFailed(f"{tid}: {err}" + (f"\n{tid}: {full}" if full else ""))
        except OSError as err:  # disk full, permissions...: say what and where
            return TaskFailed(f"{tid}: {os_error(err)}")
        if isinstance(done, dict):
            done = Done(done)
        if done is not None:
            ws.stamps.write(tid, done.key, **done.produced)
        return None

    def __str__(self) -> str:
        return f"Python: step {self.tid}"

    def __repr__(self) -> str:
        return f"<StepAction {self.tid}>"


def os_error(err: OSError) -> str:
    """An OSError in words: what went wrong, and on which path."""
    what = (err.strerror or str(err)).lower() if err.errno == errno.ENOSPC else \
        (err.strerror or str(err))
    return what + (f" ({err.filename})" if err.filename else "")


def _full_disk(ws: Workspace) -> str | None:
    """"no space left on device: PATH" when the workdir's or destdir's file
    system is full: a failing command then often says only that it failed."""
    import shutil  # shutil pulls in bz2 and lzma: imported when used, not on a no-op
    places = [ws.workdir] + ([Path(ws.settings.destdir)] if ws.settings.destdir else [])
    for place in places:
        try:
            if shutil.disk_usage(place).free < 64 * 1024:
                return f"no space left on device: {place}"
        except OSError:
            continue
    return None


class Notice(_Quiet):
    """An action that only tells the user something (a teardown)."""

    def __init__(self, say: Callable[[], None]):
        super().__init__()
        self.say = say

    def execute(self, out=None, err=None):
        self._said(self.say, err)

    def __str__(self) -> str:
        return f"Python: notice {getattr(self.say, '__name__', '')}"


def step(ws: Workspace, tid: str, work: Callable[[], dict | Done | None]) -> StepAction:
    return StepAction(ws, tid, work)


class Report(_Quiet):
    """An action that prints a report (``status``, ``show:NAME``...) on
    doit's standard output: it takes no lock, removes no stamp and writes
    nothing.  ``make()`` returns the text; a ``StackError`` fails the task."""

    def __init__(self, make: Callable[[], str]):
        super().__init__()
        self.make = make

    def execute(self, out=None, err=None):
        try:
            text = self._said(self.make, err)
        except StackError as error:
            return TaskFailed(str(error))
        stream = out if out is not None else sys.stdout
        stream.write(text + ("\n" if text and not text.endswith("\n") else ""))
        stream.flush()
        self.out = text
        return None

    def __str__(self) -> str:
        return f"Python: report {getattr(self.make, '__name__', '')}"


# --------------------------------------------------------------------------
# The run summary: every step that ran (``session.Run.summary``), how long it
# took and how it ended, printed on stderr when the run ends (stdout may be
# --reporter json).


def summary_lines(rows) -> list[str]:
    """The summary table of ``rows`` (task, seconds, ok, log)."""
    if not rows:
        return []
    width = max(len(r[0]) for r in rows)
    failed = sum(1 for r in rows if not r[2])
    total = sum(r[1] for r in rows)
    lines = [f"summary: {len(rows)} task(s) ran" + (f", {failed} failed" if failed else "")
             + f" ({_duration(total)} of work)"]
    for tid, seconds, ok, log, *result in rows:
        shown = (result[0] if result else "ok") if ok else "FAILED"
        line = f"  {tid.ljust(width)}  {_duration(seconds):>8}  {shown}"
        if not ok:
            line += f"  (log: {shown_path(log)})"
        lines.append(line)
    return lines


def print_summary(owner: session.Run) -> None:
    with owner.lock:
        rows = list(owner.summary)
    lines = summary_lines(rows)
    if lines:
        try:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


shown_path = run.shown_path
