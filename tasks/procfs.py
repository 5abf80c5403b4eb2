"""What a process is, read from /proc: its state, its start time, its
command line, the members of its process group.  Reading only: starting and
stopping processes is tasks/run.py's."""

from __future__ import annotations

import os
from pathlib import Path


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a process, or None if it
    is gone: the start time tells a process from a later one with its pid."""
    fields = _stat_fields(str(pid))
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _stat_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command name ([] if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_ticks(pid: int) -> str | None:
    st = proc_stat(pid)
    return st[1] if st else None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def group_members(pgid: int):
    """The (state, start time) of every process in group ``pgid``."""
    with os.scandir("/proc") as entries:
        names = [e.name for e in entries if e.name.isdigit()]
    for fields in map(_stat_fields, names):
        if len(fields) > 2 and fields[2] == str(pgid):
            yield (fields[0], fields[19] if len(fields) > 19 else "")
