"""What every step's doit action does around its own work, and task names.

``step(ws, task_id, work)`` returns a python-action for doit that

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

from collections.abc import Callable
from dataclasses import dataclass, field

from doit.exceptions import TaskFailed

from . import run
from .errors import StackError
from .workspace import Workspace


def task_id(kind: str, name: str | None = None) -> str:
    """``kind`` or ``kind:name``: the one spelling of a task's id."""
    return kind if name is None else f"{kind}:{name}"


def ids(kind: str, names) -> list[str]:
    return [task_id(kind, n) for n in names]


def installs_of(ws: Workspace, component: str) -> list[str]:
    """The install tasks of every part of ``component``."""
    return ids("install", (p.id for p in ws.component(component).parts))


@dataclass
class Done:
    """A finished step: the key it ran for, and what it produced (kept in
    its stamp, read by the tasks that depend on it)."""

    key: dict
    produced: dict = field(default_factory=dict)


def step(ws: Workspace, tid: str, work: Callable[[], dict | Done | None]) -> Callable:
    def action():
        try:
            ws.lock()
            ws.stamps.clear(tid)
            run.rotate(ws.log(tid))
            done = work()
        except StackError as err:
            return TaskFailed(f"{tid}: {err}")
        except OSError as err:  # disk full, permissions...: say what and where
            where = f" ({err.filename})" if err.filename else ""
            return TaskFailed(f"{tid}: {err.strerror or err}{where}")
        if isinstance(done, dict):
            done = Done(done)
        if done is not None:
            ws.stamps.write(tid, done.key, **done.produced)
        return None

    action.__name__ = f"step_{tid.replace(':', '_').replace('/', '_').replace('-', '_')}"
    action.__doc__ = f"run {tid}"
    return action
