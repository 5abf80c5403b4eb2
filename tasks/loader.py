"""The way in: doit's task loader for this tool, and ``python -m tasks``.

Every way of running the tool takes the same path:

* plain ``doit`` (``doit list``, ``doit run_pod``...) in this folder:
  doit reads pyproject.toml's ``[tool.doit]``, which names ``StackLoader``
  as its loader and the commands and backends of tasks/plugins.py;
* ``./stack.sh ARGS``, from any folder, execs ``python -m tasks ARGS``
  (``main()``), which runs doit with the same configuration;
* ``doit -f PATH/dodo.py`` from another folder: doit's own loader imports
  dodo.py, which hands the run to ``main()`` (``hand_over()``).

doit calls the loader in three steps.  ``setup()`` gets the command line's
options and refuses what this tool cannot do (process-parallel runs,
unknown ``NAME=VALUE`` variables); ``load_doit_config()`` validates the
stack (tasks/stackcache.py keeps it between runs) and gives doit its
configuration; ``load_tasks(cmd, ...)`` is told the command, and makes the
run (``session.Run``): a command that writes takes the workdir's lock (and
stops what a killed run left running) before any task is made, a read-only
one (``list``, ``info``, ``help``, or only ``status``/``graph``/``show``/
``try`` tasks) writes nothing and asks the planner (tasks/plan.py) in place
of every check.  The task creators are dodo.py's ``task_*`` functions,
called with the run's Workspace.  The run ends (``Run.close``: the summary,
the lock let go, nothing left running) when ``main()`` returns, or when the
process exits under plain doit.

A bad stack file or command line is one ``ERROR:`` line with its Hint and
exit code 3, before anything runs.
"""

from __future__ import annotations

import atexit
import contextvars
import importlib.util
import os
import sys
from pathlib import Path

from doit.cmd_base import TaskLoader2
from doit.exceptions import InvalidCommand, InvalidDodoFile

from . import action, plan, run, stackcache, state
from .errors import SpecError, StackError, did_you_mean
from .plugins import _DODO, UNSUPPORTED, Database, unsupported
from .session import Run
from .workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent  # dodo.py, stack.yaml, pyproject.toml

# What plain `doit` runs, in this order, where dodo.py defines it; run_pod,
# stop_pod, update and reset run only when asked for.
DEFAULT_TASKS = ["check", "fetch", "patch", "build", "install", "image", "config"]

# doit commands that only read: they write nothing, and work while another
# run builds.
READ_ONLY_COMMANDS = {"list", "info", "help", "tabcompletion"}

# Runs that look at every checkout (no task named: the default tasks).
WHOLE_STACK = {"status", "graph", "run_pod"}

# The variables this tool reads from the command line (NAME=VALUE).
VARIABLES = {
    "stack": "the stack file (default: stack.yaml beside dodo.py)",
    "force": "config:NAME force=1 overwrites a hand-edited file, saving it first",
    "accel": "image_boot accel=auto|kvm|tcg",
    "timeout": "image_boot, smoke and bisect:NAME timeout=SECONDS: a check's time limit",
    "ref": "try:NAME ref=REF: the candidate version to try the patch series against",
    "good": "bisect:NAME good=REF: a commit of NAME that works",
    "bad": "bisect:NAME bad=REF: a later commit of NAME that does not",
    "test": "bisect:NAME test=smoke|image_boot|CMD: what tells good from bad (default: smoke)",
    "abort": "bisect:NAME abort=1 drops the bisect under way and its workspace",
}

# doit's database under the workdir, one file per backend: ``doit --backend
# json`` must not open the sqlite3 file (each reads the other's as corrupt).
# The stamps decide what is up to date, so a backend holds only doit's own
# records, and any of them works.
DATABASES = {"sqlite3": ".doit.db", "json": ".doit.json", "dbm": ".doit.dbm"}

# The module name dodo.py is loaded under by this loader (dodo.py hands the
# run over when anything else, doit's own loader, imports it).
DODO_MODULE = "kps_dodo"


class StackLoader(TaskLoader2):
    """doit's loader for this tool (see the module docstring)."""

    cmd_options = ({**_DODO, "default": str(ROOT / "dodo.py")},)

    def __init__(self, close_at_exit: bool = True):
        super().__init__()
        self.close_at_exit = close_at_exit  # plain doit: the run ends with the process
        self.runs: list[Run] = []

    # -- doit's three steps ---------------------------------------------------

    def setup(self, opt_values):
        from doit.doit_cmd import _CMDLINE_VARS  # what doit parsed as NAME=VALUE

        self.options = opt_values
        if "outfile" in opt_values and not _given(opt_values, "outfile"):
            # doit's default for -o is the sys.stdout of when doit was
            # imported; a run reports on the one of its time (main() may run
            # more than once in a process, under another sys.stdout).
            opt_values["outfile"] = sys.stdout
        self.variables = dict(_CMDLINE_VARS or {})
        self.dodo = Path(opt_values.get("dodoFile") or ROOT / "dodo.py").absolute()
        if not self.dodo.is_file():
            raise InvalidDodoFile(f"no dodo file {self.dodo}: it lists the task kinds "
                                  f"(give -f PATH/dodo.py, or run from {ROOT})")
        self.project = self.dodo.parent
        try:
            refuse(self.variables, _given(opt_values, "par_type"))
            run.progress_interval()
        except StackError as err:
            raise InvalidDodoFile(str(err)) from None

    def load_doit_config(self) -> dict:
        self.creators = _creators(self.dodo)
        try:
            self.stack, self.keep = stackcache.validated(
                stack_path(self.variables.get("stack"), self.project), self.project)
        except SpecError as err:
            raise InvalidDodoFile(str(err)) from None
        backend = _given(self.options, "backend") or "sqlite3"
        self.dep_file = str(self.stack.settings.workdir
                            / DATABASES.get(backend, f".doit.{backend}"))
        return {
            "dep_file": self.dep_file,
            "backend": "sqlite3",
            "default_tasks": [t for t in DEFAULT_TASKS if t in self.creators
                              and (t != "image" or self.stack.image is not None)],
            "action_string_formatting": "new",
            "par_type": "thread",
            "verbosity": 2,  # every step prints what it runs itself, and logs the rest
        }

    def load_tasks(self, cmd, pos_args):
        command = cmd.get_name()
        if command in UNSUPPORTED:  # (their plugins say so before loading anything)
            raise InvalidCommand(unsupported(command))
        named = [a for a in pos_args if not a.startswith("-")] if command == "run" else []
        read_only = command in READ_ONLY_COMMANDS or read_only_tasks(named)
        current = Run(command, read_only, named, self.variables)
        if command == "run" and (self.options.get("num_process") or 0) > 1:
            from . import dispatch  # (a run with one worker keeps doit's order)

            current.on_close(dispatch.chains_first())
        self.runs.append(current)
        current.start()
        current.on_close(lambda: action.print_summary(current))
        if self.close_at_exit:
            atexit.register(current.close)
        ws = Workspace(self.stack, current)
        try:
            if command != "help":
                ws.lockfile.check()  # a broken lock stops everything, before any task
            if not read_only:
                # Refuse at once, before looking at any task, if another run
                # holds the workdir.
                ws.lock()
                self.keep()
            if command == "forget":
                forget(ws, named_tasks(pos_args), bool(self.options.get("forget_all")))
            if command == "run" and set(named) <= WHOLE_STACK:
                # every checkout's git status will be asked: git works on
                # them while doit opens its database and makes the tasks
                ws.prefetch.start()
            _open_database(cmd, ws, self.dep_file)
        except StackError as err:
            raise InvalidDodoFile(str(err)) from None
        tasks = self._tasks(ws)
        for task in tasks:
            for check, _, _ in task.uptodate:
                if isinstance(check, state.Check):
                    current.checks[check.task_id] = check
        if read_only:
            # doit asks a check when the task's turn comes, after its
            # dependencies ran; a read-only run asks before, so the planner
            # answers, following what a dependency that runs may change.
            planner = plan.planner(current)
            for task in tasks:
                task.uptodate = [(plan.Predicted(u, planner) if isinstance(u, state.Check)
                                  else u, args, kwargs) for u, args, kwargs in task.uptodate]
        return tasks

    # -- the tasks ------------------------------------------------------------

    def _tasks(self, ws: Workspace) -> list:
        """dodo.py's task creators, called with ``ws``, in the order dodo.py
        lists them (as doit orders them)."""
        from doit.loader import generate_tasks

        tasks = []
        for name, creator in self.creators.items():
            if name in self.cmd_names:
                raise InvalidDodoFile(f"{self.dodo}: task_{name}: '{name}' is a doit command")
            made = generate_tasks(name, creator(ws), creator.__doc__)
            for task in made:
                stanza = self.config.get(f"task:{task.name}") if self.config else None
                if stanza:
                    task.cfg_values = stanza
            tasks.extend(made)
        return tasks

    def close(self) -> None:
        """End the runs this loader made (``main()``, when doit returns)."""
        for current in self.runs:
            current.close()
            atexit.unregister(current.close)


def _given(options, name: str):
    """An option's value if it was given on the command line (not doit's
    default, nor DOIT_CONFIG's), else None."""
    return options.get(name) if name in getattr(options, "_non_default_keys", ()) else None


def _creators(dodo: Path) -> dict:
    """``{name: task_NAME}`` of dodo.py, in the order of the file."""
    spec = importlib.util.spec_from_file_location(DODO_MODULE, dodo)
    if spec is None or spec.loader is None:
        raise InvalidDodoFile(f"{dodo}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [(value.__code__.co_firstlineno, name[5:], value)
             for name, value in vars(module).items()
             if name.startswith("task_") and callable(value) and hasattr(value, "__code__")]
    return {name: fn for _, name, fn in sorted(found)}


def stack_path(value: str | None, project: Path) -> Path:
    if not value:
        return project / "stack.yaml"
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(os.getcwd()) / path


def read_only_tasks(named: list[str]) -> bool:
    """Whether the tasks named are all ones that only read (status, graph,
    show:NAME, try:NAME): the run then writes nothing and takes no lock."""
    return bool(named) and all(t.split(":", 1)[0] in plan.READ_ONLY_TASKS for t in named)


def named_tasks(args) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def refuse(variables: dict, par_type: str | None) -> None:
    """Stop at once for what this tool cannot do: process-parallel runs,
    unknown variables."""
    if par_type == "process":
        raise StackError("doit -P process is not supported: every step writes its state "
                         "from one process; use -P thread (doit -n 4 -P thread)")
    unknown = sorted(set(variables) - set(VARIABLES))
    if unknown:
        known = ", ".join(f"{k}=" for k in VARIABLES)
        lines = [f"unknown variable on the command line: {name}="
                 + did_you_mean(name, VARIABLES) for name in unknown]
        raise StackError("\n".join(lines), hint=f"the variables this tool reads: {known}")


def forget(ws: Workspace, names: list[str], everything: bool) -> None:
    """``doit forget [TASK...]``: the stamps decide, so drop those of the
    named tasks (a group name such as ``build`` names all its tasks; none,
    or --all: every task), and the next run redoes them."""
    everything = everything or not names
    gone = [t for t in ws.stamps.ids()
            if everything or any(t == n or t.startswith(n + ":") for n in names)]
    for tid in gone:
        ws.stamps.clear(tid)
    run.say(f"kata-passt-stack: forgot {len(gone)} task(s)"
            + (f": {', '.join(gone[:12])}" + (" ..." if len(gone) > 12 else "") if gone else "")
            + "; the next run redoes them")


def _open_database(cmd, ws: Workspace, default: str) -> None:
    """Tell doit's database (tasks/plugins.py) which file to open: the
    workdir's for a run that writes, one nobody keeps for a read-only one
    (doit opens, and so may create, its database even to list tasks, and a
    run of read-only tasks writes it when it ends)."""
    db = getattr(getattr(cmd, "dep_manager", None), "backend", None)
    if not isinstance(db, Database):
        return
    if db.name != default:  # --db-file FILE: as given
        return
    if not ws.read_only:
        ws.make_workdir()  # doit opens its database there
        return
    if db.kind.__name__ == "SqliteDB":
        db.open_in(default if os.path.exists(default) and not ws.requested else ":memory:")
        return
    import shutil  # a read-only command's scratch database only: not on a no-op
    import tempfile

    scratch = tempfile.mkdtemp(prefix="kps-doit-")
    ws.run.on_close(lambda: shutil.rmtree(scratch, True))
    db.open_in(os.path.join(scratch, os.path.basename(default)))


# --------------------------------------------------------------------------
# python -m tasks, ./stack.sh, and doit -f PATH/dodo.py from elsewhere


def doit_config() -> dict:
    """pyproject.toml's ``[tool.doit]`` as doit reads it in this folder: the
    loader, and the commands and backends of tasks/plugins.py."""
    from doit.doit_cmd import DoitConfig

    return DoitConfig().load_config_toml(str(ROOT / "pyproject.toml"), "tool.doit")


def main(argv: list[str]) -> int:
    """Run doit on ``argv`` (doit's own arguments) with this tool's loader,
    commands and backends, from any folder; doit's exit code.  The run ends
    before this returns; nothing of it stays in the process (the tests call
    this in-process)."""
    return contextvars.copy_context().run(_main, list(argv))


def _main(argv: list[str]) -> int:
    from doit import doit_cmd

    class Main(doit_cmd.DoitMain):
        BIN_NAME = "doit"

    loader = StackLoader(close_at_exit=False)
    variables = doit_cmd._CMDLINE_VARS  # doit's NAME=VALUE of the run, put back after it
    try:
        code = Main(loader, config_filenames=(), extra_config=doit_config()).run(argv)
        return code or 0  # (doit's forget returns None: exit code 0)
    except KeyboardInterrupt:
        loader.close()
        print("\ninterrupted: the commands running were stopped; the next run "
              "redoes the unfinished tasks and keeps the finished ones", file=sys.stderr)
        return 130
    finally:
        loader.close()
        doit_cmd._CMDLINE_VARS = variables


def hand_over() -> None:
    """dodo.py, imported by doit's own loader (``doit -f PATH/dodo.py`` from
    a folder without this tool's pyproject.toml): run the command line
    through ``main()`` instead, from the folder doit was started in."""
    from doit import loader as doit_loader

    started = doit_loader.initial_workdir
    if started is None:  # imported by something else than doit's loader
        return
    doit_loader.initial_workdir = None
    os.chdir(started)
    sys.exit(main(sys.argv[1:]))
