"""The only place that runs commands.

Two entry points:

* ``run()`` runs a user-visible shell command (build, install, fetch): it says
  what runs, streams all output into a log file (bytes as they come, so a
  non-UTF-8 or gigabyte-sized output neither breaks nor fills memory), and on
  failure raises ``CommandFailed`` with the exit code, the last lines and the
  log path.  Children run in their own process group so an interrupt stops the
  whole build, not just the shell.
* ``capture()`` runs a quick internal query (``git status`` and friends) and
  returns its output.  It uses ``subprocess`` directly: ``sh`` costs ~5 ms a
  call, which matters on the "nothing to do" path.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import sh

from .errors import CommandFailed

TAIL_LINES = 25
_print_lock = threading.Lock()
_running: dict[int, object] = {}
_running_lock = threading.Lock()
_registry: Path | None = None  # where running commands are recorded (see reap)


def record_commands_in(folder: Path) -> None:
    """Record every command started from now on in ``folder`` (one file per
    process group, removed when it ends), so that the next run can stop the
    commands a killed run left behind."""
    global _registry
    folder.mkdir(parents=True, exist_ok=True)
    _registry = folder


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a process, or None if it
    is gone: the start time tells a process from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _start_ticks(pid: int) -> str | None:
    st = proc_stat(pid)
    return st[1] if st else None


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
        if _start_ticks(pid) == ticks:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except OSError:
                    break
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and _group_alive(pid):
                    time.sleep(0.05)
                if not _group_alive(pid):
                    break
            stopped.append(command)
        entry.unlink(missing_ok=True)
    return stopped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader still counts for killpg; look at its state
    st = proc_stat(pgid)
    return st is not None and st[0] != "Z"


def say(message: str) -> None:
    """Tell the user what is happening (stderr, so doit shows it)."""
    with _print_lock:
        print(message, file=sys.stderr, flush=True)


def tail(path: Path, offset: int = 0, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after ``offset``, read from
    the end so a huge log costs nothing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            start = max(offset, end - 64 * 1024)
            f.seek(start)
            data = f.read()
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


def _sudo_prefix(env_keys: list[str]) -> list[str]:
    keep = ",".join(sorted(env_keys))
    return ["sudo", f"--preserve-env={keep}", "--"]


def run(
    command: str,
    *,
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    sudo: bool = False,
    label: str = "",
) -> None:
    """Run ``command`` with ``sh -c`` in ``cwd``; output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = ["sh", "-c", command]
    if sudo:
        argv = _sudo_prefix(list((env or {}).keys())) + argv
    shown = command if not sudo else "sudo " + command
    say(f"  {label}$ {shown}")
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        out.write(
            f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} in {cwd}\n### $ {shown}\n".encode()
        )
        out.flush()
        offset = out.tell()
        try:
            proc = sh.Command(argv[0])(
                *argv[1:],
                _cwd=str(cwd),
                _env=command_env(env),
                _out=out,
                _err_to_out=True,
                _in=devnull,
                _new_session=True,
                _bg=True,
                _bg_exc=False,
            )
            with _running_lock:
                _running[id(proc)] = proc
            entry = _record(proc.pid, shown)
            try:
                proc.wait()
            except BaseException as err:
                if isinstance(err, sh.ErrorReturnCode):
                    raise
                _stop(proc)
                raise
            finally:
                with _running_lock:
                    _running.pop(id(proc), None)
                if entry is not None:
                    entry.unlink(missing_ok=True)
        except sh.ErrorReturnCode as err:
            out.flush()
            raise CommandFailed(shown, err.exit_code, tail(log, offset), str(log)) from None
        except sh.SignalException as err:  # pragma: no cover - killed from outside
            out.flush()
            raise CommandFailed(shown, -err.exit_code, tail(log, offset), str(log)) from None


def _record(pid: int, command: str) -> Path | None:
    if _registry is None:
        return None
    entry = _registry / f"{pid}.pgid"
    try:
        entry.write_text(f"{pid}\n{_start_ticks(pid)}\n{command}")
    except OSError:
        return None
    return entry


def start(argv: list[str], *, log: Path, sudo: bool = False,
          label: str = "") -> subprocess.Popen:
    """Start a long-running program (crio) in the background, in its own
    session so it outlives this process and a Ctrl-C does not reach it; its
    output appended to ``log``.  Not stopped by ``stop_all()``: the caller
    records the pid and stops it when asked."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if sudo:
        argv = ["sudo", "--", *argv]
    say(f"  {label}$ {shlex.join(argv)} >> {log} 2>&1 &")
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        out.write(f"### {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=devnull,
                                start_new_session=True)


def stop_all() -> None:
    """Stop every command still running (at exit, after an interrupt)."""
    with _running_lock:
        procs = list(_running.values())
    for proc in procs:
        _stop(proc)


def _stop(proc) -> None:
    """Stop a running command and everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            proc.signal_group(sig)
        except (ProcessLookupError, OSError):
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not proc.is_alive():
                return
            time.sleep(0.05)


def capture_result(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess:
    """Run a quick query; return the completed process, whatever its status."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=command_env(env) if env else None,
        input=input,
        capture_output=True,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def capture(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: bytes | None = None,
) -> str:
    """Run a quick query and return its stdout as text."""
    result = capture_result(argv, cwd=cwd, env=env, input=input)
    if check and result.returncode != 0:
        err = result.stderr.decode("utf-8", "replace").strip()
        raise CommandFailed(shlex.join(argv), result.returncode, err, None)
    return result.stdout.decode("utf-8", "surrogateescape")
