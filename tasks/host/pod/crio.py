"""CRI-O for run_pod: use the one that answers, or start one and remember it.

"Answers" means ``crictl --runtime-endpoint unix://SOCKET version`` succeeds,
not merely that the socket file exists or accepts a connection: it is the
same client and endpoint every later step uses, so it also proves the CRI
handshake works (a stale socket left by a killed crio refuses the connection;
a crio still initialising storage accepts it only once it serves).  A missing
socket file is answered without running crictl, which would otherwise wait
for its connection timeout.

A crio that run_pod starts runs in the background in its own session (it
outlives doit, and a Ctrl-C in the terminal does not reach it), its output in
``<workdir>/logs/crio.log``.  Its pid, its start time (from /proc, so a reused
pid is never mistaken for it) and its command line go to
``<workdir>/state/crio.json``; only that process is ever stopped.

With them goes what it was started with: its command line (``crio_args``),
the crio binary (path, size, mtime) and the content of the CRI-O files the
stack writes (``/etc/crio/...``).  When one of these has changed by the next
run_pod, that crio is stopped and started again, so the change takes
effect; a crio run_pod did not start is never restarted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ... import run
from ...errors import StackError
from ...state import JsonFile, digest
from .crictl import crictl_argv
from .podhints import crio_configs

DEFAULT_SOCKET = "/var/run/crio/crio.sock"
PROBE_TIMEOUT = 2  # s, crictl's connection timeout for the "does it answer" probe
STOP_TIMEOUT = 15  # s between SIGTERM and SIGKILL
POLL = 0.2


def answers(shell, socket: str, record: bool = False) -> bool:
    if not os.path.exists(socket):
        if record:
            shell.note(f"no socket at {socket}: CRI-O does not answer")
        return False
    res = shell.query(crictl_argv(socket, PROBE_TIMEOUT) + ["version"], check=False,
                      quiet=not record, record=record, probe="does CRI-O answer?")
    return res.code == 0


# --------------------------------------------------------------------------
# The crio we started


def record_file(ws) -> JsonFile:
    return ws.json("crio")


def read_record(ws) -> dict | None:
    data = record_file(ws).read()
    return data if isinstance(data.get("pid"), int) else None


def _running(record: dict) -> bool:
    """The recorded process has not ended (same pid and start time)."""
    st = run.proc_stat(record["pid"])
    return st is not None and st[0] not in ("Z", "X") and st[1] == record.get("starttime")


def is_ours(record: dict) -> bool:
    """The recorded process is still running and is still that crio (same
    start time, 'crio' on its command line, possibly behind sudo)."""
    return _running(record) and any(os.path.basename(arg) == "crio"
                                    for arg in run.cmdline(record["pid"])[:4])


def _tail_message(log: Path) -> str:
    text = run.tail(log, lines=run.TAIL_LINES)
    return f"\n--- last lines of {log} ---\n{text}" if text else f"\n({log} is empty)"


CRIO_HINT = ("read the log above; crio refuses to start when runc, conmon or pinns is missing, "
             "when cgroup_manager is cgroupfs without conmon_cgroup = \"pod\", or when another "
             "crio holds its storage (doit config:crio writes the settings)")


def crio_argv(pod) -> list[str]:
    argv = ["crio"] + ([] if "--listen" in pod.crio_args else ["--listen", pod.socket])
    return argv + list(pod.crio_args)


def binary() -> dict | None:
    """The crio on PATH: its path, size and mtime (None when there is none)."""
    path = run.which("crio")
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime": st.st_mtime_ns}


def config_state(ws) -> dict:
    """The CRI-O files the stack writes, by content (None: not readable)."""
    out = {}
    for cfg in crio_configs(ws.stack):
        path = ws.stack.target(cfg.path)
        try:
            out[str(path)] = digest(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            out[str(path)] = None
    return out


def wanted(ws, pod) -> dict:
    return {"argv": crio_argv(pod), "socket": pod.socket, "binary": binary(),
            "config": config_state(ws)}


CHANGES = {"argv": "other crio_args", "socket": "another socket",
           "binary": "a crio binary that has changed", "config": "a CRI-O file that has changed"}


def changed(record: dict, want: dict) -> list[str]:
    """What differs between the recorded crio and the one wanted now (only
    what the record knows: an older record without a binary is not
    restarted for it)."""
    return [CHANGES[k] for k in CHANGES if k in record and record[k] != want[k]]


def ensure(ws, shell, pod) -> bool:
    """Make sure CRI-O answers on ``pod.socket``; return True if we started it."""
    want = wanted(ws, pod)
    record = read_record(ws)
    if record and is_ours(record):
        why = changed(record, want)
        if why:
            shell.say(f"the crio run_pod started (pid {record['pid']}) runs with "
                      + ", ".join(why) + " now: restarting it")
            stop(shell, record)
            record_file(ws).clear()
            record = None
    elif record:
        record_file(ws).clear()
        record = None
    if answers(shell, pod.socket, record=True):
        whose = f"the crio run_pod started (pid {record['pid']})" if record else "it"
        run.say(f"CRI-O answers on {pod.socket}: using {whose}")
        return False
    log = ws.logs / "crio.log"
    proc = None
    if record:
        run.say(f"the crio run_pod started earlier (pid {record['pid']}) does not answer yet: "
                "waiting for it")
    else:
        run.rotate(log)
        argv = want["argv"]
        run.say(f"CRI-O does not answer on {pod.socket}: starting it (output in {log})")
        proc = shell.start(argv, log)
        st = run.proc_stat(proc.pid)
        record = {"pid": proc.pid, "starttime": st[1] if st else "", **want,
                  "log": str(log), "sudo": shell.sudo,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        record_file(ws).write(record)
    deadline = time.monotonic() + pod.start_timeout
    while True:
        code = proc.poll() if proc else (None if is_ours(record) else "?")
        if code is not None:
            record_file(ws).clear()
            raise StackError(f"crio exited (code {code}) before answering on {pod.socket}"
                             + _tail_message(log), CRIO_HINT)
        if answers(shell, pod.socket):
            shell.note(f"crio answers on {pod.socket}")
            run.say(f"CRI-O answers on {pod.socket} (pid {record['pid']})")
            return True
        if time.monotonic() > deadline:
            stop(shell, record, proc)
            record_file(ws).clear()
            raise StackError(
                f"CRI-O did not answer on {pod.socket} within {pod.start_timeout} s "
                f"(stopped the crio started, pid {record['pid']})" + _tail_message(log),
                "if it was still starting, raise pod.start_timeout in stack.yaml; "
                "otherwise " + CRIO_HINT)
        time.sleep(POLL)


def _gone(record: dict, proc) -> bool:
    if proc is not None:
        return proc.poll() is not None
    return not _running(record)


def stop(shell, record: dict, proc=None) -> None:
    """SIGTERM the recorded crio, wait, then SIGKILL; only if it is still it.
    Callers have checked it is ours; from then on pid and start time say it
    is the same process: a process that is exiting loses its command line
    (or execs another) before it ends, and must not count as gone then."""
    def send(sig) -> bool:
        return _running(record) and shell.kill(record["pid"], sig)

    if not run.stop(send, lambda: _gone(record, proc), grace=STOP_TIMEOUT, poll=POLL / 2):
        raise StackError(f"crio (pid {record['pid']}) did not stop after SIGKILL")


def stop_ours(ws, shell) -> str | None:
    """Stop the crio run_pod started, if it still runs; say what happened."""
    record = read_record(ws)
    if record is None:
        return None
    pid = record["pid"]
    if not is_ours(record):
        record_file(ws).clear()
        return f"the crio run_pod started (pid {pid}) is no longer running"
    run.say(f"stopping the crio run_pod started (pid {pid})")
    stop(shell, record)
    record_file(ws).clear()
    return f"stopped the crio run_pod started (pid {pid})"
