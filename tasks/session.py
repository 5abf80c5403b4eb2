"""One doit run: what kind of run it is, and what it gathers while it runs.

The loader (tasks/loader.py) makes a ``Run`` for each doit command it loads
tasks for and hands it down through the Workspace (``ws.run``): whether the
run only reads (``doit list``, ``info``, ``status``...), the tasks named on
the command line, its variables, every up-to-date check made (by task id),
the planner of read-only runs (tasks/plan.py), the summary of the steps that
ran, the commands running now and where they are recorded, and what a
feature keeps for one run (``feature()``: the build cache's registry client,
the progress display).  Nothing of a run lives in a module: two runs in one
process (the tests run doit in-process) never see each other's.

Code with no Workspace at hand (``run.say``, ``git``, ``state.atomic_write``)
finds the run it works for through ``current()``: a context variable the
loader sets in the thread that loads the tasks, each action sets in the
thread that runs it, and ``using()`` sets for threads of our own.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar("kps_run", default=None)


def current() -> Run | None:
    """The run this thread works for, or None outside any run."""
    return _CURRENT.get()


def read_only() -> bool:
    """Whether the current run must write nothing."""
    run = _CURRENT.get()
    return run is not None and run.read_only


@contextmanager
def using(run: Run | None) -> Iterator[Run | None]:
    """While the block runs, ``current()`` is ``run`` in this thread."""
    token = _CURRENT.set(run)
    try:
        yield run
    finally:
        _CURRENT.reset(token)


def carried(fn: Callable) -> Callable:
    """``fn`` bound to the current run, for a thread of our own (a new
    thread starts outside any run)."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.copy().run(fn, *args, **kwargs)


class Run:
    """The state of one doit run (see the module docstring)."""

    def __init__(self, command: str = "run", read_only: bool = False, requested=(),
                 variables: dict[str, str] | None = None):
        self.command = command  # the doit command: run, list, info, help, forget...
        self.read_only = read_only  # nothing is written: list, info, help, status...
        self.requested = tuple(requested)  # the tasks named on the command line
        self.variables = dict(variables or {})  # NAME=VALUE from the command line
        self.checks: dict = {}  # task id -> its state.Check, in the order made
        self.planner = None  # tasks/plan.py's Planner, made on first use
        self.summary: list[tuple[str, float, bool, Path, str]] = []  # steps that ran
        self.registry: Path | None = None  # where running commands are recorded (run.reap)
        self.processes: dict[int, Callable[[], object]] = {}  # running now: how to stop each
        self.lock = threading.RLock()  # guards the lists above, shared by doit's threads
        self._features: dict[str, object] = {}
        self._closers: list[Callable[[], None]] = []
        self._token: contextvars.Token | None = None
        self._restore: list[Callable[[], None]] = []
        self.closed = False

    def var(self, name: str, default: str | None = None) -> str | None:
        """A ``NAME=VALUE`` variable given on the command line."""
        return self.variables.get(name, default)

    def flag(self, name: str) -> bool:
        """A yes/no variable (``force=1``, ``abort=yes``): 1, yes, true or on."""
        return str(self.variables.get(name) or "").strip().lower() in ("1", "yes", "true", "on")

    def seconds(self, name: str, default: int) -> int:
        """A time limit given as ``NAME=SECONDS`` (whole seconds above 0), or
        ``default`` when it is not given."""
        given = self.variables.get(name)
        if given is None or given == "":
            return default
        if not str(given).isdigit() or int(given) == 0:
            from .errors import StackError

            raise StackError(f"{name}={given}: give the time limit in whole seconds")
        return int(given)

    def feature(self, name: str, make: Callable[[], object] | None = None):
        """What feature ``name`` keeps for this run, made by ``make()`` the
        first time it is asked for (without ``make``: None until then)."""
        with self.lock:
            if name not in self._features and make is not None:
                self._features[name] = make()
            return self._features.get(name)

    def on_close(self, closes):
        """Call ``closes()``, or ``closes.close()``, when the run ends (the
        last registered first); returns ``closes``."""
        with self.lock:
            self._closers.append(getattr(closes, "close", closes))
        return closes

    def track(self, key: int, stop: Callable[[], object] | None) -> None:
        """A command of this run started (``stop`` stops it) or ended (None)."""
        with self.lock:
            if stop is None:
                self.processes.pop(key, None)
            else:
                self.processes[key] = stop

    def ran(self, tid: str, seconds: float, ok: bool, log: Path, result: str = "ok") -> None:
        with self.lock:
            self.summary.append((tid, seconds, ok, log, result))

    # -- the run's life -------------------------------------------------------

    def start(self) -> None:
        """Become the current run of this thread, and make an interrupt or a
        SIGTERM stop the commands this run started (for as long as it runs:
        ``close()`` puts back what was there)."""
        self._token = _CURRENT.set(self)
        previous = sys.excepthook

        def on_uncaught(kind, value, tb):
            if issubclass(kind, KeyboardInterrupt):
                self.stop_processes()
                print("\ninterrupted: the commands running were stopped; the next run "
                      "redoes the unfinished tasks and keeps the finished ones", file=sys.stderr)
                return
            previous(kind, value, tb)

        sys.excepthook = on_uncaught
        self._restore.append(lambda: setattr(sys, "excepthook", previous))
        if threading.current_thread() is threading.main_thread():
            import signal

            handler = signal.getsignal(signal.SIGTERM)
            if handler == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _terminate)
                self._restore.append(lambda: signal.signal(signal.SIGTERM, handler))

    def stop_processes(self) -> None:
        """Stop every command of this run still running (its process group)."""
        with self.lock:
            stops = list(self.processes.values())
        for stop in stops:
            stop()

    def close(self) -> None:
        """End the run: stop what still runs, let each feature close (the
        progress display, the workdir lock), and put back what ``start()``
        changed.  Called once; later calls do nothing."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            closers = list(reversed(self._closers))
        self.stop_processes()
        for fn in closers:
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - the others must still close
                print(f"kata-passt-stack: while ending the run: {err}", file=sys.stderr)
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()
        if self._token is not None:
            try:
                _CURRENT.reset(self._token)
            except ValueError:  # closed from another context (atexit): nothing to undo
                pass
            self._token = None


def _terminate(signum, frame):
    raise SystemExit(128 + signum)
