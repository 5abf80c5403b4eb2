"""What a run shows while it runs: the log path on each command's start
line, a live line per running command on a terminal, "still running"
notes elsewhere, whole lines from parallel tasks."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

from conftest import ROOT


def _slow_stack(project, seconds=3):
    project.write_stack(f"""\
        slow0:
          git: {project.up.gamma()}
          ref: v1
          build: "echo starting 0; sleep {seconds}; echo done 0"
        """)


def _held_stack(project):
    """A build that runs until the test creates the returned flag file (at
    most 60 s), so that a test waits for what it looks for, not a guess."""
    flag = project.root / "release"
    command = (f"echo starting 0; n=0; while [ ! -e {flag} ] && [ $n -lt 1200 ]; "
               f"do sleep 0.05; n=$((n+1)); done; echo done 0")
    project.write_stack(f"""\
        slow0:
          git: {project.up.gamma()}
          ref: v1
          build: '{command}'
        """)
    return flag, command


def _read_until(proc, pattern, timeout=30):
    """stderr of ``proc`` until ``pattern`` shows (None if it ends first)."""
    seen = ""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096).decode(errors="replace")
            if not chunk:
                return None, seen
            seen += chunk
            if re.search(pattern, seen):
                return True, seen
    return None, seen


def test_the_log_path_is_printed_while_the_command_still_runs(project):
    flag, command = _held_stack(project)
    proc = project.start("build:slow0", env={"KPS_PROGRESS": "off"})
    try:
        found, seen = _read_until(proc, re.escape(f"$ {command}  ")
                                  + r"\(log: build/logs/build-slow0\.log\)")
        assert found, seen
        assert proc.poll() is None  # still running
    finally:
        flag.touch()
        rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest


def test_still_running_notes_off_a_terminal(project):
    _slow_stack(project, seconds=1)
    res = project.doit("build:slow0", env={"KPS_PROGRESS_INTERVAL": "0.3"})
    assert re.search(r"^still running: build:slow0 \(\d s, log: build/logs/build-slow0\.log\)$",
                     res.err, re.M), res.err


def test_a_live_line_with_elapsed_time_on_a_terminal(project):
    flag, _ = _held_stack(project)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "KPS_PROGRESS"}
    proc = subprocess.Popen(project.argv("build:slow0"), cwd=project.root, stdin=slave,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if re.search(rb"\[0:0[1-9]\] build:slow0", out):
                    flag.touch()  # the elapsed time was shown: let it finish
            elif proc.poll() is not None:
                break
    finally:
        proc.wait(timeout=60)
        os.close(master)
    text = out.decode(errors="replace")
    assert re.search(r"\[0:0[1-4]\] build:slow0  starting 0", text), text
    assert "\x1b[1A\x1b[J" in text  # redrawn in place
    assert proc.returncode == 0


def test_parallel_output_is_whole_lines(project):
    up = project.up.gamma()
    comps = ""
    for i in range(3):
        commands = ", ".join(f'"true {c * 300} {i}"' for c in "xyz")
        comps += f"p{i}:\n  git: {up}\n  ref: v1\n  build: [{commands}]\n"
    project.write_stack(comps)
    res = project.doit("-n", "3", env={"KPS_PROGRESS": "stream"})
    lines = [line for line in res.err.splitlines() if "$ true" in line]
    assert len(lines) == 9
    for line in lines:
        assert re.fullmatch(r"  build:p(\d): \$ true ([xyz])\2{299} \1  "
                            r"\(log: build/logs/build-p\1\.log\)", line), line


def test_progress_module_is_in_the_runner():
    assert "KPS_PROGRESS" in (ROOT / "tasks" / "run.py").read_text()
