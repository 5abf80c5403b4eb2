"""Where things live for one stack, and the one owner of state on disk.

A ``Workspace`` is made by the loader for each run: the validated ``Stack``
and the run (``session.Run``: read-only or not, the tasks asked for, what
the run gathers), plus the folders under the workdir (``src/``, ``logs/``,
``state/``), the stamps, every JSON state file (``json()``), the
per-checkout hash caches and build-output records, and the run lock, held
until the run ends.  Creating it touches nothing on disk: ``doit list``
stays read-only.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from . import run as runner
from .errors import LockHeld, StackError
from .lockfile import LockFile
from .model import Component, Part, Stack
from .session import Run
from .state import HashCache, JsonFile, Stamps
from .tree import Prefetch, Trees, source_state


class Workspace:
    def __init__(self, stack: Stack, run: Run | None = None):
        self.stack = stack
        self.run = run if run is not None else Run()
        self.settings = stack.settings
        self.workdir = stack.settings.workdir
        self.src = self.workdir / "src"
        self.logs = self.workdir / "logs"
        self.state = self.workdir / "state"
        self.stamps = Stamps(self.state / "stamps")
        self.lockfile = LockFile(stack.lock_path, stack.path.name)
        self.trees = Trees(self.state / "trees.json")
        self.prefetch = self.run.on_close(
            Prefetch({n: self.checkout(n) for n in stack.components}, self.hashes))
        self.started = time.time()
        self._caches: dict[str, HashCache] = {}
        self._outputs_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_guard = threading.Lock()

    @property
    def read_only(self) -> bool:
        """doit list / info / help, status...: nothing is written."""
        return self.run.read_only

    @property
    def requested(self) -> tuple[str, ...]:
        """The tasks named on the command line (none: plain doit)."""
        return self.run.requested

    # -- paths ---------------------------------------------------------------

    def checkout(self, name: str) -> Path:
        return self.src / name

    def log(self, task_id: str) -> Path:
        return self.logs / (task_id.replace(":", "-").replace("/", "-") + ".log")

    def scratch(self) -> Path:
        """Temporary files of this run (emptied when the next run starts, so
        a killed run leaves nothing behind for long)."""
        folder = self.state / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def json(self, *name: str, kind: type = dict) -> JsonFile:
        """The state file ``<workdir>/state/NAME/.../LAST.json``."""
        return JsonFile(self.state.joinpath(*name[:-1], name[-1] + ".json"), kind=kind)

    def stage(self, part_id: str) -> Path:
        """The staging folder of ``install:PART``, its commands' DESTDIR:
        one stable path per part, so it never changes a key.  What is merged
        from it is recorded under ``state/installs`` (see manifest.py)."""
        return self.workdir / "stage" / part_id.replace("/", "@")

    def marker(self, name: str) -> JsonFile:
        """Exists while the patch step moves a checkout (see steps/patch.py)."""
        return self.json("moving", name)

    def head_record(self, name: str) -> JsonFile:
        """Where the patch step last put HEAD in checkout ``name`` (``{"head":
        commit}``): kept apart from its stamp, which a failed run clears, to
        tell our own patched commits from the user's (steps/patch.py writes
        it, steps/status.py reads it)."""
        return self.json("checkouts", name)

    def hashes(self, name: str) -> HashCache:
        with self._outputs_lock:
            cache = self._caches.get(name)
            if cache is None:
                cache = self._caches[name] = HashCache(self.state / "hashes" / f"{name}.json")
            return cache

    def source_state(self, name: str, fresh: bool = False) -> dict:
        """A checkout's content state (see tree.py); from the run's first,
        parallel scan of all checkouts unless ``fresh`` or touched since."""
        scanned = None if fresh else self.prefetch.take(name)
        return source_state(self.checkout(name), self.hashes(name), self.trees, scanned)

    def component(self, name: str) -> Component:
        return self.stack.components[name]

    def parts_of(self, need: str) -> tuple[Part, ...]:
        """The parts a ``needs`` entry names: ``NAME`` (all) or ``NAME/PART``."""
        name, _, part = need.partition("/")
        parts = self.component(name).parts
        return parts if not part else tuple(p for p in parts if p.name == part)

    # -- build outputs in checkouts -------------------------------------------

    def _outputs_file(self, name: str) -> JsonFile:
        return self.json("outputs", name, kind=list)

    def outputs(self, name: str) -> set[str]:
        """Untracked paths our own build and install commands created in a
        checkout: build output, not source edits."""
        return {p for p in self._outputs_file(name).read() if isinstance(p, str)}

    def add_outputs(self, name: str, paths: set[str]) -> None:
        with self._outputs_lock:
            data = self.outputs(name)
            if paths <= data:
                return
            self._outputs_file(name).write(sorted(data | paths), indent=0)

    # -- command environment ---------------------------------------------------

    def env(self, part: Part) -> dict[str, str]:
        """What every build and install command gets (besides os.environ)."""
        env = dict(part.env)
        env.update({
            "SRC": str(self.checkout(part.component)),
            "DESTDIR": self.settings.destdir,
            "PREFIX": self.settings.prefix,
            "JOBS": str(self.settings.jobs),
        })
        return env

    def needs_sudo(self) -> bool:
        """Writes to the target system get sudo when not root and live."""
        return runner.sudo_for(self.settings.sudo, live=not self.settings.destdir)

    # -- the run lock -------------------------------------------------------------

    def make_workdir(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.workdir, os.W_OK):
                raise PermissionError(13, "not writable")
        except (FileExistsError, NotADirectoryError):
            bad = next((p for p in [self.workdir, *self.workdir.parents]
                        if p.exists() and not p.is_dir()), self.workdir)
            raise StackError(f"cannot use the workdir {self.workdir}: {bad} is a file, not a "
                             "folder", hint="move the file away, or set settings.workdir in "
                                            "the stack file to another folder") from None
        except OSError as err:
            raise StackError(f"cannot use the workdir {self.workdir}: {err.strerror}",
                             hint="set settings.workdir in the stack file to a folder "
                                  "you can write") from None

    def lock(self) -> None:
        """Hold ``<workdir>/.lock`` until the run ends, or refuse at once if
        another doit run holds it.  The loader takes it before any task of a
        run that writes; ``doit list`` and ``doit info`` never wait."""
        with self._lock_guard:
            if self._lock_fd is not None:
                return
            self.make_workdir()
            path = self.workdir / ".lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = os.read(fd, 200).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                raise LockHeld(
                    f"another doit run is working in {self.workdir} ({holder or 'unknown pid'})",
                    hint="wait for it to finish, or stop it; then run doit again",
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode())
            self._lock_fd = fd
            self.run.on_close(self.unlock)
            # Commands a killed run left behind would race with ours.
            procs = self.state / "running"
            for command in runner.reap(procs):
                runner.say(f"stopped a command left running by an interrupted run: {command}")
            procs.mkdir(parents=True, exist_ok=True)
            self.run.registry = procs  # every command from now on is recorded there
            if (self.state / "tmp").exists():
                import shutil  # pulls in bz2 and lzma: only when there is something to remove

                shutil.rmtree(self.state / "tmp", ignore_errors=True)

    def unlock(self) -> None:
        """Let go of the run lock (the run ended)."""
        with self._lock_guard:
            fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
