"""The doit commands and database backends this tool puts in place of doit's.

pyproject.toml names them (``[tool.doit.plugins.command]`` and
``[tool.doit.plugins.backend]``), which plain ``doit`` reads in this folder
and ``python -m tasks`` (./stack.sh) reads from anywhere (tasks/loader.py):

* ``clean``, ``reset-dep``, ``dumpdb``, ``strace``, ``ignore`` work on
  doit's own database, which this tool does not decide from (the stamps
  do): each says in one line what to use instead.
* ``info`` on a task that does not exist says so in a line, with the
  closest name (doit's own looks it up without checking: a traceback).
* ``sqlite3``, ``json``, ``dbm``: doit's backends, opened on first use in
  the file the loader gives once it knows the command (a read-only one
  gets one nobody keeps), and written at the end without a traceback when
  the disk is full (the stamps of the tasks that finished are kept).
"""

from __future__ import annotations

import threading

from doit import cmd_base
from doit.cmd_base import Command, DoitCmdBase
from doit.cmd_clean import Clean as _Clean
from doit.cmd_info import Info as _Info
from doit.cmd_strace import Strace as _Strace
from doit.dependency import DbmDB, JsonDB, SqliteDB
from doit.exceptions import InvalidCommand

from .errors import StackError, did_you_mean

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


def unsupported(command: str) -> str:
    return f"doit {command} is not supported by kata-passt-stack: {UNSUPPORTED[command]}"


# doit's -f FILE, accepted after any command as doit accepts it
_DODO = {"section": "task loader", "name": "dodoFile", "short": "f", "long": "file",
         "type": str, "default": "dodo.py", "env_var": "DOIT_FILE",
         "help": "load the tasks from dodo FILE [default: dodo.py beside tasks/]"}


class _Unsupported(Command):
    """Says what to use instead; takes doit's options for it, so any
    command line doit would take gets the same line."""

    doc_usage = ""
    cmd_options = (*DoitCmdBase.base_options, _DODO)

    def execute(self, params, args):
        raise InvalidCommand(unsupported(self.name))


class Clean(_Unsupported):
    name = "clean"
    doc_purpose = "not supported by kata-passt-stack: says how to clean a checkout"
    cmd_options = (*_Unsupported.cmd_options, *_Clean.cmd_options)


class ResetDep(_Unsupported):
    name = "reset-dep"
    doc_purpose = "not supported by kata-passt-stack: says how to make a task run again"


class DumpDB(_Unsupported):
    name = "dumpdb"
    doc_purpose = "not supported by kata-passt-stack: says where each task's record is"
    cmd_options = (cmd_base.opt_depfile, _DODO)


class Strace(_Unsupported):
    name = "strace"
    doc_purpose = "not supported by kata-passt-stack: says how to trace a build"
    cmd_options = (*_Unsupported.cmd_options, *_Strace.cmd_options)


class Ignore(_Unsupported):
    name = "ignore"
    doc_purpose = "not supported by kata-passt-stack: says how to pick the tasks to run"


class Info(_Info):
    """doit's info, saying in a line when the task does not exist."""

    name = "info"

    # doit passes _execute its options by parameter name: keep doit's names
    def _execute(self, pos_args, hide_status=False):
        names = [t.name for t in self.task_list]
        if len(pos_args) == 1 and pos_args[0] not in names:
            err = StackError(f"doit info: no task '{pos_args[0]}'"
                             + did_you_mean(pos_args[0], names),
                             hint="doit list --all shows every task")
            raise InvalidCommand(str(err))
        return super()._execute(pos_args, hide_status)


# --------------------------------------------------------------------------
# Backends


class Database:
    """One of doit's backends (``kind``), opened on first use in the file
    the loader names (``open_in``), not when doit makes it: doit makes its
    database before it loads the tasks, so before anyone knows whether the
    command writes."""

    kind: type = SqliteDB

    def __init__(self, name, codec, *, module_name=None):
        self.name = name  # as doit was given it (--db-file, or the loader's default)
        self.codec = codec
        self.module_name = module_name
        self.path = name
        self._db = None
        self._lock = threading.Lock()

    def open_in(self, path: str) -> None:
        self.path = path

    def _open(self):
        with self._lock:
            if self._db is None:
                self._db = self.kind(self.path, self.codec, module_name=self.module_name)
            return self._db

    def get(self, task_id, dependency):
        return self._open().get(task_id, dependency)

    def set(self, task_id, dependency, value):
        return self._open().set(task_id, dependency, value)

    def in_(self, task_id):
        return self._open().in_(task_id)

    def remove(self, task_id):
        return self._open().remove(task_id)

    def remove_all(self):
        return self._open().remove_all()

    def dump(self):
        """doit writes its database when a run ends; on a full disk that
        raises.  The stamps decide (each written as its task ends), so say
        it in a line and go on."""
        if self._db is None:
            return  # never opened: nothing to write
        import sqlite3

        try:
            self._db.dump()
        except (sqlite3.OperationalError, OSError) as err:
            from .run import say

            say(f"kata-passt-stack: doit's database {self.path} was not written ({err}); "
                "the stamps of the tasks that finished are kept")


class Sqlite(Database):
    kind = SqliteDB


class Json(Database):
    kind = JsonDB


class Dbm(Database):
    kind = DbmDB
