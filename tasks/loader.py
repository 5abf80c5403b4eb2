"""Turn ``doit stack=PATH`` into a Workspace and doit's configuration.

Called once when dodo.py is imported.  A bad stack file becomes doit's
``InvalidDodoFile`` so doit prints our lines and exits non-zero, without a
traceback and before anything runs.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

from doit import get_initial_workdir
from doit.exceptions import InvalidDodoFile

from . import run
from .errors import SpecError, StackError
from .stack import load
from .workspace import Workspace

# What plain `doit` runs, in this order, where dodo.py defines it; run_pod,
# stop_pod, update and reset run only when asked for.
DEFAULT_TASKS = ["check", "fetch", "patch", "build", "install", "image", "config"]


def stack_path(value: str | None, project: Path) -> Path:
    if not value:
        return project / "stack.yaml"
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = Path(get_initial_workdir() or os.getcwd()) / path
    return path


# doit commands that only read: they must work while another run builds.
READ_ONLY_COMMANDS = {"list", "info", "help", "dumpdb", "tabcompletion", "strace"}


def workspace(value: str | None, project: Path, argv: list[str] | None = None) -> Workspace:
    try:
        stack = load(stack_path(value, project), project=project)
    except SpecError as err:
        raise InvalidDodoFile(str(err)) from None
    _stop_children_on_exit()
    ws = Workspace(stack)
    args = sys.argv[1:] if argv is None else argv
    if not READ_ONLY_COMMANDS.intersection(args):
        # Refuse at once, before looking at any task, if another run holds
        # the workdir (actions would take the lock anyway).
        try:
            ws.lock()
        except StackError as err:
            raise InvalidDodoFile(str(err)) from None
    return ws


def doit_config(ws: Workspace, namespace: dict) -> dict:
    try:
        ws.make_workdir()  # doit opens its database there
    except StackError as err:
        raise InvalidDodoFile(str(err)) from None
    return {
        "dep_file": str(ws.workdir / ".doit.db"),
        "backend": "sqlite3",
        "default_tasks": [t for t in DEFAULT_TASKS if f"task_{t}" in namespace],
        "action_string_formatting": "new",
        "par_type": "thread",
    }


def _stop_children_on_exit() -> None:
    """Builds run in their own process groups; make sure none outlives us
    (Ctrl-C in a parallel run, or a SIGTERM)."""
    atexit.register(run.stop_all)
    previous = sys.excepthook

    def on_uncaught(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            run.stop_all()
            print("\ninterrupted: the commands running were stopped; the next run "
                  "redoes the unfinished tasks and keeps the finished ones", file=sys.stderr)
            return
        previous(kind, value, tb)

    sys.excepthook = on_uncaught
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (doit used as a library)
        pass


def _terminate(signum, frame):
    raise SystemExit(128 + signum)
