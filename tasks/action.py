"""What every step's doit action does around its own work.

``step(ws, task_id, work)`` returns a python-action for doit that

1. takes the run lock (a second doit on the same workdir refuses at once),
2. removes the task's stamp (a run killed half-way can never look done),
3. starts a fresh log (the previous one is kept as ``.log.1``),
4. runs ``work()``, which returns the key to stamp,
5. writes the stamp, or turns a ``StackError`` into doit's ``TaskFailed``
   naming the task, what failed and the log.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from doit.exceptions import TaskFailed

from .errors import StackError
from .workspace import Workspace


def rotate_log(ws: Workspace, task_id: str) -> None:
    log = ws.log(task_id)
    if log.exists():
        os.replace(log, log.with_name(log.name + ".1"))


def step(ws: Workspace, task_id: str, work: Callable[[], dict | None]) -> Callable:
    def action():
        try:
            ws.lock()
            ws.stamps.clear(task_id)
            rotate_log(ws, task_id)
            key = work()
        except StackError as err:
            return TaskFailed(f"{task_id}: {err}")
        except OSError as err:  # disk full, permissions...: say what and where
            where = f" ({err.filename})" if err.filename else ""
            return TaskFailed(f"{task_id}: {err.strerror or err}{where}")
        if key is not None:
            extra = key.pop("_extra", {}) if isinstance(key, dict) else {}
            ws.stamps.write(task_id, key, **extra)
        return None

    action.__name__ = f"step_{task_id.replace(':', '_').replace('/', '_').replace('-', '_')}"
    action.__doc__ = f"run {task_id}"
    return action
