"""The only place that starts processes.

Everything that runs a program comes through here: builds and installs,
git, crictl and CRI-O, the prerequisite probes, mbuto and QEMU.  This module
also owns what goes with running things: the sudo policy, saying what runs,
log files and their rotation, reading a log's tail, and stopping a process
(SIGTERM, a grace period, then SIGKILL).

* ``run()`` runs a user-visible shell command (build, install, fetch): it
  says what runs, gives the command the log file itself as its stdout and
  stderr (the bytes go there as they come, through no pipe of ours, so a
  non-UTF-8 or gigabyte-sized output neither breaks nor fills memory), and
  on failure raises ``CommandFailed`` with the exit code (or the signal),
  the last lines and the log path.  Children run in their own process group
  so an interrupt stops the whole build, not just the shell.
* ``query()`` runs a quick internal command (``git status``, ``crictl pods``,
  ``go version``) and returns its ``Result``.
* Both use ``subprocess``, which starts a program with vfork and no thread.
  The ``sh`` library, used here before, forks the whole process and runs
  threads per command: 3.4 ms a command against 0.9 ms (CPU 3.9 against
  0.9 ms, 50 calls of ``sh -c true``), 25 ms to import, and in a parallel
  run its forks of a threaded process were on every step of the critical
  path (``bench/run.py --only parallel``: fresh ``-n 4`` 1.17x -> 1.12x the
  path).
* ``start()`` starts a long-running program (crio) in the background.
"""

from __future__ import annotations

import contextvars
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import session
from .errors import CommandFailed, StackError
from .procfs import cmdline, group_members, proc_stat, start_ticks  # noqa: F401 - run.proc_stat

TAIL_LINES = 25
# One writer at a time on this process's stderr, whichever run it is for.
_PRINT_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# Saying things, and logs


# Where say() writes in this thread (see output_to): (capture, realtime).
_STREAMS = contextvars.ContextVar("kps_streams", default=None)


@contextmanager
def output_to(capture, realtime=None):
    """While the block runs, ``say()`` in this thread writes to ``capture``
    (the task's own record of its output) and to ``realtime`` (what doit
    shows now), never through the process-wide ``sys.stderr``: doit's
    parallel threads would otherwise see each other's output, and its JSON
    reporter would lose it all."""
    token = _STREAMS.set((capture, realtime))
    try:
        yield
    finally:
        _STREAMS.reset(token)


def say(message: str) -> None:
    """Tell the user what is happening: whole lines, never interleaved with
    another thread's (stderr, so doit shows it)."""
    capture, realtime = _STREAMS.get() or (None, sys.stderr)
    progress = _progress(create=False)
    with _PRINT_LOCK:
        if progress is not None:
            progress.erase()
        for stream in (capture, realtime):
            if stream is not None:
                stream.write(message + "\n")
        if realtime is not None:
            realtime.flush()
        if progress is not None:
            progress.draw()


def shown_path(path: Path) -> str:
    """A path as the user would type it where doit started: relative when inside."""
    try:
        rel = os.path.relpath(path, os.getcwd())
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expanded(command: str, env: dict[str, str] | None) -> str:
    """``command`` with the variables the tool sets (``$PREFIX``, a part's
    ``env``) written out, as the shell will see them."""
    if not env:
        return command
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), command)


# --------------------------------------------------------------------------
# Progress while commands run.  KPS_PROGRESS picks how: ``live`` (the default
# on a terminal): one status line per running command (task, elapsed time,
# its last output line), redrawn in place below the output; ``notes`` (the
# default elsewhere): "still running: TASK (N min, log: PATH)" once a minute
# (KPS_PROGRESS_INTERVAL seconds); ``stream``: every output line as it comes,
# prefixed with its task; ``off``.


@dataclass
class _Live:
    task: str
    log: Path
    offset: int
    started: float
    notes: int = 0
    read: int = 0  # stream mode: how far the log was shown
    done: bool = False  # stream mode: all shown (the log goes on with the next command)
    lock: threading.Lock = field(default_factory=threading.Lock)


def progress_mode() -> str:
    mode = os.environ.get("KPS_PROGRESS", "auto")
    if mode not in ("live", "notes", "stream", "off"):
        try:
            mode = "live" if sys.stderr.isatty() else "notes"
        except (AttributeError, ValueError):
            mode = "notes"
    return mode


def progress_interval() -> float:
    """KPS_PROGRESS_INTERVAL: seconds between two notes (unset or empty: 60).
    Anything but a number above 0 is refused: 0 or -1 would otherwise mean
    a note every tick, or silently the default (the loader asks at start, so
    that it stops doit before anything runs, not in the progress thread)."""
    value = os.environ.get("KPS_PROGRESS_INTERVAL", "").strip()
    if not value:
        return 60.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise StackError(f"KPS_PROGRESS_INTERVAL={value!r}: expected a number of seconds "
                         "above 0 (default 60)",
                         hint="unset it for a note a minute, or set e.g. "
                              "KPS_PROGRESS_INTERVAL=30 (KPS_PROGRESS=off: no notes)")
    return max(0.05, seconds)


class Progress:
    """One run's progress display (``session.Run.feature``): the commands
    running now, their live lines, the thread that redraws them or notes."""

    def __init__(self):
        self.live: dict[int, _Live] = {}
        self.drawn = 0  # live lines on the terminal now (under _PRINT_LOCK)
        self.lock, self.wake = threading.Lock(), threading.Event()
        self.ticker: threading.Thread | None = None
        self.stopped = False

    def erase(self) -> None:  # take the live lines off the terminal (under _PRINT_LOCK)
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}A\x1b[J")
            self.drawn = 0

    def draw(self) -> None:
        """Draw a live line per running command (under _PRINT_LOCK)."""
        import shutil  # shutil pulls in bz2 and lzma: imported when used, not on a no-op
        if self.drawn or not self.live or self.stopped or progress_mode() != "live":
            return
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        lines = []
        for item in list(self.live.values()):
            elapsed = int(time.monotonic() - item.started)
            last = tail(item.log, item.offset, lines=1).strip().replace("\t", " ")
            line = f"  [{elapsed // 60}:{elapsed % 60:02d}] {item.task}  {last}".rstrip()
            lines.append(line[:width])
        sys.stderr.write("".join(f"\x1b[2m{line}\x1b[0m\n" for line in lines))
        sys.stderr.flush()
        self.drawn = len(lines)

    def watch(self, key: int, item: _Live | None) -> None:
        """A command started (``item``: what to show of it) or ended (None)."""
        with self.lock:
            if item is None:
                item = self.live.pop(key, None)
            else:
                self.live[key], item = item, None
                if self.ticker is None and not self.stopped and progress_mode() != "off":
                    self.ticker = threading.Thread(target=session.carried(self._tick),
                                                   name="kps-progress", daemon=True)
                    self.ticker.start()
        self.wake.set()
        if item is not None and progress_mode() == "stream":
            _stream(item, last=True)
        with _PRINT_LOCK:
            self.erase()
            self.draw()

    def _tick(self) -> None:
        while not self.stopped:
            mode = progress_mode()
            self.wake.wait({"live": 1.0, "stream": 0.2}.get(mode,
                                                             min(progress_interval(), 5.0)))
            self.wake.clear()
            if self.stopped:
                return
            with self.lock:
                items = list(self.live.values())
            if mode == "live":
                with _PRINT_LOCK:
                    self.erase()
                    self.draw()
            elif mode == "stream":
                for item in items:
                    _stream(item)
            elif mode == "notes":
                every = progress_interval()
                for item in items:
                    elapsed = time.monotonic() - item.started
                    if int(elapsed // every) > item.notes:
                        item.notes = int(elapsed // every)
                        took = f"{int(elapsed // 60)} min" if elapsed >= 60 else f"{int(elapsed)} s"
                        say(f"still running: {item.task} ({took}, log: {shown_path(item.log)})")

    def close(self) -> None:  # the run ends: stop the thread, take the live lines off
        with self.lock:
            self.stopped = True
            ticker = self.ticker
        self.wake.set()
        if ticker is not None:
            ticker.join(timeout=10)
        with _PRINT_LOCK:
            self.erase()


def _progress(create: bool) -> Progress | None:
    """The current run's progress display (made on first use when
    ``create``, and closed with the run); None outside a run."""
    run = session.current()
    if run is None or not create:
        return run and run.feature("progress")
    return run.feature("progress", lambda: run.on_close(Progress()))


def _stream(item: _Live, last: bool = False) -> None:
    """Say the lines the command wrote since the last time; once it ended
    (``last``), never again: its log goes on with the next command's."""
    with item.lock:
        if item.done:
            return
        item.done = last
        try:
            data, _ = tail_bytes(item.log, 1 << 20, max(item.offset, item.read))
        except OSError:
            return
        cut = data.rfind(b"\n") + 1
        item.read = max(item.offset, item.read) + cut
    for line in data[:cut].decode("utf-8", "replace").splitlines():
        say(f"  {item.task}| {line}")


def rotate(log: Path) -> None:
    """Start a fresh log, keeping the previous one as ``.log.1``."""
    if log.exists():
        os.replace(log, log.with_name(log.name + ".1"))


def tail_bytes(path: Path, limit: int, offset: int = 0) -> tuple[bytes, int]:
    """The last ``limit`` bytes of ``path`` written after ``offset``, and the
    file's size; read from the end, so a huge log costs nothing."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(offset, end - limit))
        return f.read(), end


def tail(path: Path, offset: int = 0, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after ``offset``."""
    try:
        data, _ = tail_bytes(path, 64 * 1024, offset)
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def command_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The user's environment plus ``extra`` (sh's ``_env`` replaces it all)."""
    env = dict(os.environ)
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------
# Privileges: the one sudo policy


def is_root() -> bool:
    return os.geteuid() == 0


def sudo_for(policy: str, live: bool) -> bool:
    """Whether a command that writes to the live system gets ``sudo``:
    under ``settings.sudo: auto``, when not root and not staged (``live``)."""
    return policy == "auto" and live and not is_root()


def as_root(argv: list[str], sudo: bool, keep_env=()) -> list[str]:
    """``argv`` behind ``sudo`` when ``sudo`` (keeping the named variables)."""
    if not sudo:
        return list(argv)
    keep = [f"--preserve-env={','.join(sorted(keep_env))}"] if keep_env else []
    return ["sudo", *keep, "--", *argv]


def need_root(task: str, policy: str, why: str) -> bool:
    """For tasks that only root can do: True when sudo must be used (asked
    for once, up front), False when we are root; a ``StackError`` when
    neither is possible."""
    if is_root():
        return False
    if policy != "auto":
        raise StackError(f"{task} needs root: {why}",
                         hint="run it as root, or set settings.sudo: auto to let it use sudo")
    if which("sudo") is None:
        raise StackError(f"{task} needs root, and sudo is not installed", hint="run it as root")
    query(["sudo", "-v"], check=False)  # ask for the password once
    return True


def which(program: str, path: str | None = None) -> str | None:
    import shutil  # shutil pulls in bz2 and lzma: imported when used, not on a no-op
    return shutil.which(program, path=path)


# --------------------------------------------------------------------------
# Quick queries


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.code == 0


class ProgramMissing(StackError):
    """The program to run is not installed (or not on PATH)."""


def query(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
          input: bytes | None = None, check: bool = True, timeout: float | None = None,
          missing_hint: str | None = None) -> Result:
    """Run a quick command; its ``Result``.  With ``check``, a non-zero exit
    raises ``CommandFailed`` with its stderr."""
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=command_env(env) if env else None, input=input,
            capture_output=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise ProgramMissing(f"{argv[0]}: command not found",
                             hint=missing_hint or f"install {argv[0]}") from None
    except subprocess.TimeoutExpired as err:
        out, errs = err.stdout or b"", (err.stderr or b"") + b"\n(timed out)"
        result = Result(tuple(argv), -1, out, errs)
    else:
        result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and not result.ok:
        raise CommandFailed(shlex.join(argv), result.code, result.err.strip(), None)
    return result


def capture(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
            check: bool = True, input: bytes | None = None) -> str:
    """Run a quick query and return its stdout as text."""
    return query(argv, cwd=cwd, env=env, check=check, input=input).out


# --------------------------------------------------------------------------
# Commands the user sees


def run(command: str, *, cwd: Path, log: Path, env: dict[str, str] | None = None,
        sudo: bool = False, label: str = "") -> None:
    """Run ``command`` with ``sh -c`` in ``cwd``; output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = as_root(["sh", "-c", command], sudo, keep_env=(env or {}).keys())
    shown = command if not sudo else "sudo " + command
    say(f"  {label}$ {shown}  (log: {shown_path(log)})")
    if expanded(command, env) != command:
        say(f"  {' ' * len(label)}  = {expanded(command, env)}")
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        out.write(
            f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} in {cwd}\n### $ {shown}\n".encode())
        out.flush()
        offset = out.tell()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=command_env(env), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=devnull,
                                    start_new_session=True)
        except OSError as err:
            raise CommandFailed(shown, 127, str(err), str(log)) from None
        with _running(proc, _Live(label.rstrip(": ") or shown, log, offset,
                                  time.monotonic()), shown):
            try:
                code = proc.wait()
            except BaseException:
                stop_group(proc.pid)
                proc.wait()
                raise
        if code != 0:
            out.flush()
            raise CommandFailed(shown, code, tail(log, offset), str(log))


@contextmanager
def _running(proc, item: _Live, command: str):
    """While ``proc`` runs: stopped if the run ends first, on its progress
    display, recorded in ``Run.registry`` for the next run (see ``reap``)."""
    current, progress = session.current(), _progress(create=True)
    registry = current.registry if current is not None else None
    entry = registry / f"{proc.pid}.pgid" if registry is not None else None
    try:
        if entry is not None:
            entry.write_text(f"{proc.pid}\n{start_ticks(proc.pid)}\n{command}")
    except OSError:
        entry = None
    if current is not None:
        current.track(id(proc), lambda: stop_group(proc.pid))
    if progress is not None:
        progress.watch(id(proc), item)
    try:
        yield
    finally:
        if current is not None:
            current.track(id(proc), None)
        if progress is not None:
            progress.watch(id(proc), None)
        if entry is not None:
            entry.unlink(missing_ok=True)


def start(argv: list[str], *, log: Path, sudo: bool = False,
          label: str = "") -> subprocess.Popen:
    """Start a long-running program (crio) in the background, in its own
    session so it outlives this process and a Ctrl-C does not reach it; its
    output appended to ``log``.  Not stopped when the run ends: the caller
    records the pid and stops it when asked."""
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = as_root(argv, sudo)
    say(f"  {label}$ {shlex.join(argv)} >> {log} 2>&1 &")
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        out.write(f"### {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=devnull,
                                    start_new_session=True)
        except FileNotFoundError:
            raise ProgramMissing(f"{argv[0]}: command not found",
                                 hint=f"install {argv[0]} (doit install), and make sure the "
                                      "folder it is installed in is on PATH") from None
    current = session.current()
    if current is not None:
        current.on_close(lambda: _let_go(proc))
    return proc


def _let_go(proc: subprocess.Popen) -> None:
    """The run ends and ``proc`` runs on, as meant: its exit status is no
    longer this process's to wait for (nor to warn about when it goes)."""
    if proc.poll() is None:
        proc._child_created = False  # what Popen.__del__ asks; there is no public way


# --------------------------------------------------------------------------
# Processes: stopping them (tasks/procfs.py reads what they are)


def stop(send: Callable[[signal.Signals], bool], gone: Callable[[], bool],
         grace: float = 5, poll: float = 0.05) -> bool:
    """The one way to stop something: SIGTERM, wait up to ``grace`` seconds,
    then SIGKILL and wait again.  ``send(sig)`` delivers a signal (False when
    there is nothing left to signal); ``gone()`` says whether it has ended.
    True when it ended."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, max(grace, 3))):
        if gone():
            return True
        if not send(sig):
            return gone()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(poll)
    return gone()


def kill(pid: int, sig: signal.Signals, sudo: bool = False) -> bool:
    """Send ``sig`` to one process (through sudo when it is root's)."""
    if sudo:
        return query(["sudo", "kill", f"-{sig.name[3:]}", str(pid)], check=False).ok
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _killpg(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except OSError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie does not):
    members can outlive the group's leader."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(st is not None and st[0] not in "ZX" for st in group_members(pgid))


def stop_group(pgid: int, grace: float = 5) -> bool:
    """Stop process group ``pgid`` (a command and everything it started)."""
    return stop(lambda sig: _killpg(pgid, sig), lambda: not group_alive(pgid), grace)


def reap(folder: Path) -> list[str]:
    """Stop the process groups a killed run left running; return their commands."""
    stopped = []
    for entry in sorted(folder.glob("*.pgid")) if folder.is_dir() else []:
        try:
            pid_text, ticks, command = entry.read_text().split("\n", 2)
            pid = int(pid_text)
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)
            continue
        if start_ticks(pid) == ticks:
            stop_group(pid, grace=3)
            stopped.append(command)
        entry.unlink(missing_ok=True)
    return stopped
