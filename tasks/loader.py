"""From ``doit stack=PATH`` to a Workspace and doit's configuration.

Called once when dodo.py is imported.  A bad stack file becomes doit's
``InvalidDodoFile`` so doit prints our lines and exits non-zero, without a
traceback and before anything runs.

Validation (``tasks/spec``) costs ~150 ms of pydantic model building, a
quarter of a no-op, so ``load()`` keeps the validated ``Stack`` in a cache
under the workdir (``<workdir>/state/stack.pickle``) keyed by the file's
bytes, the validator's code and the environment it reads (HOME, CPU count),
and uses it only while the files validation looked at (patches, pod
templates) still exist or not as they did.

doit's read-only commands (``list``, ``info``, ``help``...) write nothing:
no lock, no cache, no database file.  Which command runs is read from the
command line with doit's own parser, here and nowhere else.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import signal
import sys
from pathlib import Path

import yaml
from doit import get_initial_workdir
from doit.cmd_base import Command, DodoTaskLoader, opt_depfile
from doit.cmdparse import CmdOption, CmdParse, CmdParseError
from doit.exceptions import InvalidCommand, InvalidDodoFile

from . import run, state
from .errors import SpecError, StackError, did_you_mean
from .model import Stack
from .workspace import Workspace

# What plain `doit` runs, in this order, where dodo.py defines it; run_pod,
# stop_pod, update and reset run only when asked for.
DEFAULT_TASKS = ["check", "fetch", "patch", "build", "install", "image", "config"]

# doit commands that only read: they write nothing, and work while another
# run builds.
READ_ONLY_COMMANDS = {"list", "info", "help", "tabcompletion"}

# doit commands that work on doit's own database, which this tool does not
# decide from (the stamps do): each would claim success and change nothing.
UNSUPPORTED = {
    "clean": "build outputs live in the checkouts (git -C build/src/NAME clean -dxf) and "
             "installs are taken back by doit uninstall:NAME",
    "reset-dep": "the stamps under <workdir>/state/stamps decide what is up to date; "
                 "doit forget TASK makes a task run again",
    "dumpdb": "what each task last ran for is in <workdir>/state/stamps/*.json "
              "(doit info TASK says in words why it would run)",
    "strace": "builds run in their own processes; use strace -f ./stack.sh build:NAME",
    "ignore": "doit's ignore list lives in its database, which the stamps override; "
              "name the tasks you want instead (doit build:NAME)",
}

# The variables this tool reads from the command line (NAME=VALUE).
VARIABLES = {
    "stack": "the stack file (default: stack.yaml beside dodo.py)",
    "force": "config:NAME force=1 overwrites a hand-edited file, saving it first",
    "accel": "image_boot accel=auto|kvm|tcg",
    "timeout": "image_boot timeout=SECONDS",
    "ref": "try:NAME ref=REF: the candidate version to try the patch series against",
}


def stack_path(value: str | None, project: Path) -> Path:
    if not value:
        return project / "stack.yaml"
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = Path(get_initial_workdir() or os.getcwd()) / path
    return path


def doit_command(argv: list[str]) -> str:
    """The doit command ``argv`` runs (``run`` when none is named), parsed
    the way doit parses it: loader options first, then ``NAME=VALUE``
    variables, then the command."""
    try:
        parser = CmdParse([CmdOption(opt) for opt in DodoTaskLoader.cmd_options])
        _, rest = parser.parse_only(list(argv))
    except CmdParseError:
        rest = list(argv)
    words = [a for a in rest if not ("=" in a and not a.startswith("-"))]
    if words and words[0] in ("--help", "--version"):
        return "help"
    if words and words[0] in _commands():
        return words[0]
    return "run"


def _commands() -> set[str]:
    from doit.doit_cmd import DoitMain

    return {cmd.get_name() for cmd in DoitMain.DOIT_CMDS}


def workspace(value: str | None, project: Path, argv: list[str] | None = None) -> Workspace:
    argv = sys.argv[1:] if argv is None else argv
    command = doit_command(argv)
    named = requested(argv)
    read_only = command in READ_ONLY_COMMANDS or read_only_tasks(named)
    try:
        refuse(command, argv)
        run.check_progress_interval()
    except StackError as err:
        raise InvalidDodoFile(str(err)) from None
    if command == "info":
        _info_names_known()
    if read_only:
        state.set_read_only()
        from . import plan

        state.predict_with(plan.predict)  # a task whose dependency will run is stale too
    try:
        stack = load(stack_path(value, project), project=project, store=not read_only)
    except SpecError as err:
        raise InvalidDodoFile(str(err)) from None
    _stop_children_on_exit()
    ws = Workspace(stack, read_only=read_only, requested=named)
    try:
        if command != "help":
            ws.lockfile.check()  # a broken lock stops everything, before any task
        if not read_only:
            # Refuse at once, before looking at any task, if another run
            # holds the workdir.
            ws.lock()
        if command == "forget":
            forget(ws, argv)
    except StackError as err:
        raise InvalidDodoFile(str(err)) from None
    return ws


def read_only_tasks(named: list[str]) -> bool:
    """Whether the tasks named are all ones that only read (status, graph,
    show:NAME, try:NAME): the run then writes nothing and takes no lock."""
    from .plan import READ_ONLY_TASKS

    return bool(named) and all(t.split(":", 1)[0] in READ_ONLY_TASKS for t in named)


def refuse(command: str, argv: list[str]) -> None:
    """Stop at once for what this tool cannot do: doit commands that work
    on doit's database alone, process-parallel runs, unknown variables."""
    if command in UNSUPPORTED:
        raise StackError(unsupported(command))
    if _parallel_type(argv) == "process":
        raise StackError("doit -P process is not supported: every step writes its state "
                         "from one process; use -P thread (doit -n 4 -P thread)")
    from doit.doit_cmd import _CMDLINE_VARS  # what doit parsed as NAME=VALUE

    unknown = sorted(set(_CMDLINE_VARS or {}) - set(VARIABLES))
    if unknown:
        known = ", ".join(f"{k}=" for k in VARIABLES)
        lines = [f"unknown variable on the command line: {name}="
                 + did_you_mean(name, VARIABLES) for name in unknown]
        raise StackError("\n".join(lines), hint=f"the variables this tool reads: {known}")


def unsupported(command: str) -> str:
    return f"doit {command} is not supported by kata-passt-stack: {UNSUPPORTED[command]}"


class DumpDB(Command):
    """``doit dumpdb`` never loads dodo.py, so nothing there can refuse it.
    doit reads pyproject.toml's ``[tool.doit.plugins.command]`` in the folder
    it runs in, which puts this in its place for ``doit dumpdb`` run where
    dodo.py is (./stack.sh routes dumpdb here itself, from anywhere)."""

    name = "dumpdb"
    doc_purpose = "not supported by kata-passt-stack: says where each task's record is"
    doc_usage = ""
    cmd_options = (opt_depfile,)  # doit's own: accepted, so it still says why

    def execute(self, params, args):
        raise InvalidCommand(unsupported(self.name))


def _run_args(argv: list[str]) -> tuple[dict, list[str]]:
    """doit run's options and the task names of ``argv``, parsed by doit."""
    from doit.cmd_base import DoitCmdBase
    from doit.cmd_run import Run

    # doit takes NAME=VALUE variables out before it parses the options
    words = [a for a in argv if a != "run" and not ("=" in a and not a.startswith("-"))]
    try:
        options = DoitCmdBase.base_options + Run.cmd_options + DodoTaskLoader.cmd_options
        params, rest = CmdParse([CmdOption(o) for o in options]).parse(words)
    except CmdParseError:
        return {}, []
    return params, [a for a in rest if not a.startswith("-") and "=" not in a]


def _parallel_type(argv: list[str]) -> str | None:
    """-P as given on the command line (doit's own default is 'process',
    but DOIT_CONFIG makes it 'thread')."""
    params = _run_args(argv)[0]
    given = getattr(params, "_non_default_keys", set())
    return params.get("par_type") if "par_type" in given else None


def requested(argv: list[str]) -> list[str]:
    """The tasks named on a ``doit [run]`` command line (none: plain doit)."""
    return _run_args(argv)[1] if doit_command(argv) == "run" else []


def forget(ws: Workspace, argv: list[str]) -> None:
    """``doit forget [TASK...]``: the stamps decide, so drop those of the
    named tasks (a group name such as ``build`` names all its tasks; none,
    or --all: every task), and the next run redoes them."""
    args = argv[argv.index("forget") + 1:] if "forget" in argv else []
    names = [a for a in args if not a.startswith("-") and "=" not in a]
    everything = not names or "-a" in args or "--all" in args
    gone = [t for t in ws.stamps.ids()
            if everything or any(t == n or t.startswith(n + ":") for n in names)]
    for tid in gone:
        ws.stamps.clear(tid)
    run.say(f"kata-passt-stack: forgot {len(gone)} task(s)"
            + (f": {', '.join(gone[:12])}" + (" ..." if len(gone) > 12 else "") if gone else "")
            + "; the next run redoes them")


def _options(argv: list[str]) -> dict:
    """The options given on ``argv`` to the doit command it runs, parsed by
    doit (only those given: not doit's defaults, nor DOIT_CONFIG's)."""
    from doit.doit_cmd import DoitMain

    command = doit_command(argv)
    cls = next((c for c in DoitMain.DOIT_CMDS if c.get_name() == command), None)
    if cls is None:
        return {}
    options = (*getattr(cls, "base_options", ()), *DodoTaskLoader.cmd_options, *cls.cmd_options)
    words = [a for a in argv if not ("=" in a and not a.startswith("-"))]
    if command in words:
        words.remove(command)
    try:
        params, _ = CmdParse([CmdOption(o) for o in options]).parse(words)
    except CmdParseError:
        return {}
    return {k: params[k] for k in getattr(params, "_non_default_keys", ())}


def _info_names_known() -> None:
    """doit's ``info`` (0.36, 0.37) looks its task up without checking that it
    exists (a KeyError and a traceback): say it in a line, with the closest
    name."""
    from doit.cmd_info import Info

    if getattr(Info._execute, "_kps", False):
        return
    execute = Info._execute

    # doit passes _execute its options by parameter name: keep doit's names
    def checked(self, pos_args, hide_status=False):
        names = [t.name for t in self.task_list]
        if len(pos_args) == 1 and pos_args[0] not in names:
            err = StackError(f"doit info: no task '{pos_args[0]}'"
                             + did_you_mean(pos_args[0], names),
                             hint="doit list --all shows every task")
            raise InvalidCommand(str(err))
        return execute(self, pos_args, hide_status)

    checked._kps = True
    Info._execute = checked


def _quiet_database() -> None:
    """doit writes its database when a run ends; on a full disk sqlite raises
    and doit prints a traceback.  This tool decides from its stamps, which
    are written as each task ends, so say it in a line and go on."""
    import sqlite3

    from doit.dependency import SqliteDB

    if getattr(SqliteDB.dump, "_kps", False):
        return
    dump = SqliteDB.dump

    def guarded(self):
        try:
            dump(self)
        except sqlite3.OperationalError as err:
            run.say(f"kata-passt-stack: doit's database {self.name} was not written ({err}); "
                    "the stamps of the tasks that finished are kept")

    guarded._kps = True
    SqliteDB.dump = guarded


# doit's database under the workdir, one file per backend: ``doit --backend
# json`` must not open the sqlite3 file (each reads the other's as corrupt).
# The stamps decide what is up to date, so a backend holds only doit's own
# records, and any of them works.
DATABASES = {"sqlite3": ".doit.db", "json": ".doit.json", "dbm": ".doit.dbm"}


def database(ws: Workspace, backend: str) -> str:
    """The ``dep_file`` doit opens with ``backend``."""
    db = ws.workdir / DATABASES.get(backend, f".doit.{backend}")
    if not ws.read_only:
        try:
            ws.make_workdir()  # doit opens its database there
        except StackError as err:
            raise InvalidDodoFile(str(err)) from None
        return str(db)
    # doit opens (and so may create) its database even to list tasks, and a
    # run of read-only tasks writes it when it ends: give it one nobody keeps
    if backend == "sqlite3":
        return str(db) if db.exists() and not ws.requested else ":memory:"
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="kps-doit-")
    atexit.register(shutil.rmtree, scratch, True)
    return os.path.join(scratch, db.name)


def doit_config(ws: Workspace, namespace: dict, argv: list[str] | None = None) -> dict:
    _quiet_database()
    backend = _options(sys.argv[1:] if argv is None else argv).get("backend", "sqlite3")
    return {
        "dep_file": database(ws, backend),
        "backend": "sqlite3",
        "default_tasks": [t for t in DEFAULT_TASKS if f"task_{t}" in namespace
                          and (t != "image" or ws.stack.image is not None)],
        "action_string_formatting": "new",
        "par_type": "thread",
        "verbosity": 2,  # every step prints what it runs itself, and logs the rest
    }


# --------------------------------------------------------------------------
# Loading, with a cache

CACHE_VERSION = 2
_SPEC = Path(__file__).parent / "spec"
_CODE = [*sorted(_SPEC.glob("*.py")), Path(__file__).parent / "model.py",
         Path(__file__).parent / "catalog.py"]


def load(path, project: Path | None = None, store: bool = True) -> Stack:
    """The validated stack at ``path`` (``SpecError`` if it is invalid)."""
    path = Path(path).absolute()
    try:
        data = path.read_bytes()
    except OSError:
        data = None  # let validation say what is wrong
    cache = cache_file(path, data) if data is not None else None
    key = _key(path, project, data) if cache else None
    if key:
        stack = _cached(cache, key)
        if stack is not None:
            return stack
    from . import spec  # pydantic only when something changed

    stack, checked = spec.validate(path, project=project)
    if key and store and cache.parent.parent == stack.settings.workdir:
        _store(cache, key, stack, checked)
    return stack


def cache_file(path: Path, data: bytes) -> Path | None:
    """``<workdir>/state/stack.pickle``, the workdir read from the file with
    a plain YAML parse (the full validation is what the cache saves)."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(data, Loader=loader)
        workdir = ((doc.get("settings") or {}).get("workdir") or "build")
        if not isinstance(workdir, str):
            return None
    except Exception:  # noqa: BLE001 - validation will say what is wrong
        return None
    folder = Path(os.path.normpath(path.parent / os.path.expanduser(workdir)))
    return folder / "state" / "stack.pickle"


def _key(path: Path, project: Path | None, data: bytes) -> str:
    code = []
    for file in _CODE:
        try:
            st = os.stat(file)
            code.append((file.name, st.st_mtime_ns, st.st_size))
        except OSError:
            code.append((file.name, None, None))
    facts = (CACHE_VERSION, str(path), str(project), os.environ.get("HOME"), os.cpu_count(),
             sys.version_info[:2], code, hashlib.sha256(data).hexdigest())
    return hashlib.sha256(repr(facts).encode()).hexdigest()


def _cached(cache: Path, key: str) -> Stack | None:
    try:
        with open(cache, "rb") as f:
            entry = pickle.load(f)
        if entry["key"] != key:
            return None
        for name, was_file in entry["files"]:
            if os.path.isfile(name) != was_file:
                return None
        return entry["stack"]
    except Exception:  # a missing, old or damaged cache is just a miss
        return None


def _store(cache: Path, key: str, stack: Stack, files: list) -> None:
    try:
        state.atomic_write(cache, pickle.dumps({"key": key, "stack": stack, "files": files}))
    except OSError:
        pass  # only a cache


# --------------------------------------------------------------------------
# Interrupts


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


if __name__ == "__main__":  # stack.sh, for the doit commands that skip dodo.py
    try:
        refuse(doit_command(sys.argv[1:]), sys.argv[1:])
    except StackError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(3)
