"""Writing a host configuration file without losing anything.

The text last written to each file is kept under ``<workdir>/state/configs``.
A file that differs from it was edited by hand: it is left as it is and the
task stops, showing the difference; ``force`` (``doit config:NAME force=1``)
first saves the edited file as a timestamped backup and then writes.  A
file that existed before the tool ever wrote it is saved once
(``NAME.kps-orig``) before the first write.  Backups go beside the file,
except in drop-in folders (``*.d``: CRI-O reads every file in
``crio.conf.d``, recursively, whatever its name), where they go to a sibling
folder ``<folder>.kps-backup``.  Writes are atomic (a temporary file in the
same folder, renamed over the old one) and keep the old file's mode and
owner; through sudo when the target needs it (``Workspace.needs_sudo``).
"""

from __future__ import annotations

import difflib
import os
import shlex
import stat
import time
from pathlib import Path

from ...errors import ConfigError
from ...run import as_root, query, run, say
from ...state import atomic_write
from ...workspace import Workspace

DIFF_LINES = 40


def install_text(ws: Workspace, task_id: str, name: str, path: Path, text: str, *,
                 mode: int | None = None, force: bool = False, keep: str = "") -> None:
    """Write ``text`` to ``path`` unless that would lose a hand edit."""
    sudo = ws.needs_sudo()
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}): not replacing "
                          "it with a file",
                          hint="remove the link, or point the path in stack.yaml at its target")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} exists and is not a regular file")
    data = text.encode()
    current = _read(path, sudo)
    last = _record(ws, name, "last", path)
    pending = _record(ws, name, "next", path)
    if current == data:
        _remember(ws, name, "last", path, data)
        _forget(ws, name, "next")
        say(f"  {task_id}: {path} already reads as it should")
        return
    if current is not None:
        ours = [r for r in (last, pending) if r is not None]
        if not ours:
            saved = _backup(ws, task_id, path, "orig", sudo)
            say(f"  {task_id}: {path} was there before kata-passt-stack wrote it: "
                f"saved as {saved}")
        elif current not in ours:
            if not force:
                raise _hand_edit(ws, task_id, path, ours[0], current, keep)
            saved = _backup(ws, task_id, path, "edit", sudo)
            say(f"  {task_id}: force=1: the hand-edited {path} is saved as {saved}")
    if current is not None:
        st = os.stat(path)
        new_mode = mode if mode is not None else stat.S_IMODE(st.st_mode)
        owner = (st.st_uid, st.st_gid)
    else:
        new_mode, owner = (mode if mode is not None else 0o644), None
    _remember(ws, name, "next", path, data)
    if sudo:
        _write_sudo(ws, task_id, name, path, data, new_mode, owner)
    else:
        atomic_write(path, data, mode=new_mode, owner=owner)
    _remember(ws, name, "last", path, data)
    _forget(ws, name, "next")
    say(f"  {task_id}: wrote {path}")


def _read(path: Path, sudo: bool) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        if not sudo:
            raise ConfigError(f"cannot read {path}: permission denied") from None
        return query(as_root(["cat", "--", str(path)], sudo)).stdout


def _state_file(ws: Workspace, name: str, which: str):
    return ws.json("configs", f"{name}.{which}")


def _record(ws: Workspace, name: str, which: str, path: Path) -> bytes | None:
    """What the tool wrote (``last``) or was writing (``next``) to ``path``."""
    record = _state_file(ws, name, which).read()
    if record.get("path") != str(path) or not isinstance(record.get("content"), str):
        return None
    return record["content"].encode("utf-8", "surrogateescape")


def _remember(ws: Workspace, name: str, which: str, path: Path, data: bytes) -> None:
    record = {"path": str(path), "content": data.decode("utf-8", "surrogateescape")}
    _state_file(ws, name, which).write(record, indent=None)


def _forget(ws: Workspace, name: str, which: str) -> None:
    _state_file(ws, name, which).clear()


def backup_dir(path: Path) -> Path:
    """Beside the file, except in a drop-in folder (``*.d``), whose every
    file its program reads: then in the sibling folder ``<folder>.kps-backup``."""
    folder = path.parent
    if folder.name.endswith(".d"):
        return folder.with_name(folder.name + ".kps-backup")
    return folder


def _backup(ws: Workspace, task_id: str, path: Path, kind: str, sudo: bool) -> Path:
    folder = backup_dir(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{path.name}.kps-orig" if kind == "orig" else f"{path.name}.kps-edit-{stamp}"
    target, n = folder / name, 1
    while target.exists():  # never overwrite an earlier backup
        n += 1
        target = folder / (f"{path.name}.kps-{kind}-{stamp}" + ("" if n == 2 else f"-{n}"))
    if sudo:
        run(f"mkdir -p {shlex.quote(str(folder))} && "
            f"cp -p -- {shlex.quote(str(path))} {shlex.quote(str(target))}",
            cwd=ws.workdir, log=ws.log(task_id), env={"KPS_TASK": task_id}, sudo=True,
            label=f"{task_id}: ")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    st = os.stat(path)
    atomic_write(target, path.read_bytes(), mode=stat.S_IMODE(st.st_mode),
                 owner=(st.st_uid, st.st_gid))
    return target


def _write_sudo(ws: Workspace, task_id: str, name: str, path: Path, data: bytes, mode: int,
                owner: tuple[int, int] | None) -> None:
    """The same through sudo: the text is staged under the workdir, then
    installed beside the target and renamed over it as root."""
    staged = ws.state / "configs" / f"{name}.upload"
    atomic_write(staged, data, mode=0o600)
    beside = path.parent / f".{path.name}.kps-tmp"
    chown = f" -o {owner[0]} -g {owner[1]}" if owner else ""
    q = shlex.quote
    try:
        run(f"install -D -m {mode:o}{chown} {q(str(staged))} {q(str(beside))} && "
            f"mv -f {q(str(beside))} {q(str(path))}",
            cwd=ws.workdir, log=ws.log(task_id), env={"KPS_TASK": task_id}, sudo=True,
            label=f"{task_id}: ")
    finally:
        staged.unlink(missing_ok=True)


def _hand_edit(ws: Workspace, task_id: str, path: Path, ours: bytes, now: bytes,
               keep: str) -> ConfigError:
    lines = list(difflib.unified_diff(
        ours.decode("utf-8", "replace").splitlines(keepends=True),
        now.decode("utf-8", "replace").splitlines(keepends=True),
        fromfile=f"{path} (as kata-passt-stack wrote it)", tofile=f"{path} (on disk now)"))
    shown = "".join(line if line.endswith("\n") else line + "\n" for line in lines[:DIFF_LINES])
    if len(lines) > DIFF_LINES:
        shown += f"... and {len(lines) - DIFF_LINES} more lines of difference\n"
    where = backup_dir(path) / f"{path.name}.kps-edit-<time>"
    return ConfigError(
        f"{path} was edited by hand since kata-passt-stack wrote it: left as it is, "
        f"nothing written.\n{shown.rstrip()}",
        hint=f"to keep the edit, {keep}, then run `doit {task_id} force=1`; to drop it, run "
             f"`doit {task_id} force=1`.  Either way the edited file is first saved as "
             f"{where}")
