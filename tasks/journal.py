"""Carrying out a journal: the file operations of a merge or an uninstall.

A journal (written by manifest.py) says what the target must become: the
old manifest's entries, the new ones, the staging folder they come from,
which files to back up.  ``apply()`` makes it so and can be run again after
a kill: whatever is already done is seen as done.  It needs only the
standard library, because it runs as root through sudo when the target
needs it, as ``python -m tasks.journal apply JOURNAL`` (started by
manifest.py through run.py); it prints what it did as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path

from .errors import StackError

_CHUNK = 1 << 20


def on_target(root: str, path: str) -> str:
    """Where the target-system ``path`` is on this machine."""
    return root.rstrip("/") + path


# --------------------------------------------------------------------------
# What a tree holds


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def scan(stage: Path, root: str) -> dict[str, dict]:
    """The staged tree's entries, keyed by where they land under ``root``."""
    out: dict[str, dict] = {}

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            path, where = item.path, f"{rel}/{item.name}"
            st = os.lstat(path)
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
            if stat.S_ISDIR(st.st_mode):
                out[on_target(root, where)] = {"type": "dir", "mode": mode}
                walk(path, where)
            elif stat.S_ISLNK(st.st_mode):
                out[on_target(root, where)] = {"type": "link", "target": os.readlink(path)}
            elif stat.S_ISREG(st.st_mode):
                out[on_target(root, where)] = {"type": "file", "mode": mode,
                                               "size": st.st_size, "sha256": sha256(path)}
            else:
                raise StackError(f"the install created {where}, which is neither a file, a "
                                 "symbolic link nor a folder: it cannot be installed")

    if stage.is_dir():
        walk(str(stage), "")
    return out


def lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _same(path: str, st: os.stat_result, entry: dict, mode: bool = False) -> bool:
    """Whether ``path`` holds what ``entry`` says (its mode too, with ``mode``)."""
    if entry["type"] == "link":
        return stat.S_ISLNK(st.st_mode) and os.readlink(path) == entry["target"]
    if entry["type"] == "dir":
        return os.path.isdir(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
        return False
    if mode and f"{stat.S_IMODE(st.st_mode):04o}" != entry["mode"]:
        return False
    return sha256(path) == entry["sha256"]


def _same_files(a: str, b: str) -> bool:
    sa, sb = lstat(a), lstat(b)
    if sa is None or sb is None or stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    return sa.st_size == sb.st_size and sha256(a) == sha256(b)


# --------------------------------------------------------------------------
# Carrying out a journal (as root when the target needs it)


def apply(j: dict) -> dict:
    """Make the target match journal ``j``: remove what the old manifest had
    and the new one has not, create the new folders, put each new file and
    symlink in place.  Idempotent; returns what it did."""
    try:
        return _apply(j)
    except PermissionError as err:
        raise StackError(f"cannot change {err.filename}: permission denied",
                         hint="run as root, or set settings.sudo: auto") from None


def _apply(j: dict) -> dict:
    root, stage, old, new = j["root"], j.get("stage"), j["old"], j["new"]
    old_backups, unowned, ours = j.get("old_backups", {}), set(j["unowned"]), set(j["ours"])
    owner = tuple(j["owner"]) if j.get("owner") else None
    cut = len(root.rstrip("/"))
    out = {"written": [], "unchanged": 0, "removed": [], "kept": [], "restored": [],
           "backups": {}, "saved": {}, "adopted": [], "created_dirs": [], "removed_dirs": [],
           "missing": []}
    # 1. files and symlinks the old install had and the new one has not
    for path, e in sorted(old.items()):
        if e["type"] == "dir" or (path in new and new[path]["type"] != "dir"):
            continue
        backup = old_backups.get(path)
        st = lstat(path)
        if st is not None and not _same(path, st, e):
            if backup and _same_files(path, backup):  # put back before a kill
                os.unlink(backup)
                out["restored"].append(path)
            else:
                out["kept"].append(path)
            continue
        if st is not None:
            os.unlink(path)
            out["removed"].append(path)
        if backup and os.path.lexists(backup):
            _copy(backup, path, None)
            os.unlink(backup)
            out["restored"].append(path)
    # 2. folders left empty, deepest first
    gone = [p for p, e in old.items() if e["type"] == "dir" and new.get(p, {}).get("type") != "dir"]
    for path in sorted(gone, key=lambda p: (p.count("/"), p), reverse=True):
        if path in ours and not os.path.islink(path):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue  # not empty: someone else's files are in it
            out["removed_dirs"].append(path)
    if new and not os.path.isdir(root):
        os.makedirs(root)
    # 3. the new folders, parents first
    for path, e in sorted(new.items()):
        if e["type"] != "dir" or os.path.isdir(path):
            continue
        if os.path.lexists(path):
            raise StackError(f"{path} is in the way: a folder is to be installed there")
        os.mkdir(path)
        os.chmod(path, int(e["mode"], 8))
        out["created_dirs"].append(path)
    # 4. files and symlinks
    for path, e in sorted(new.items()):
        if e["type"] == "dir":
            continue
        backup = _under(j["backups"], path[cut:])
        st = lstat(path)
        if st is not None and _same(path, st, e, mode=True):
            if path in unowned:
                if os.path.lexists(backup):
                    out["backups"][path] = backup
                else:
                    out["adopted"].append(path)
            out["unchanged"] += 1
            continue
        src = stage + path[cut:] if stage else None
        if src is None or not os.path.lexists(src):
            out["missing"].append(path)  # the stage of an interrupted run is gone
            continue
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise StackError(f"{path} is a folder: the install has a file there")
            if path in unowned:
                if not os.path.lexists(backup):
                    _copy(path, backup, owner)
                out["backups"][path] = backup
            elif path in old and not _same(path, st, old[path]):
                saved = _under(j["saved"], path[cut:])
                if not os.path.lexists(saved):
                    _copy(path, saved, owner)
                out["saved"][path] = saved
        _place(src, path, e)
        out["written"].append(path)
    return out


def _under(folder: str, path: str) -> str:
    return folder.rstrip("/") + path


def _mkdirs(folder: str, owner: tuple[int, int] | None) -> None:
    """Create ``folder`` and its missing parents, owned by ``owner`` (the
    user, when this runs as root: backups live in the user's workdir)."""
    if os.path.isdir(folder):
        return
    _mkdirs(os.path.dirname(folder), owner)
    os.mkdir(folder)
    if owner and os.geteuid() == 0:
        os.chown(folder, *owner)


def _copy(src: str, dest: str, owner: tuple[int, int] | None) -> None:
    """Copy a file or symlink, its mode and owner kept; the copy appears
    whole (written beside ``dest``, then renamed)."""
    _mkdirs(os.path.dirname(dest), owner)
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.kps-new")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copy2(src, tmp)
    if os.geteuid() == 0:
        os.lchown(tmp, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(tmp, stat.S_IMODE(st.st_mode))  # chown clears set-id bits
    os.rename(tmp, dest)


def _place(src: str, path: str, entry: dict) -> None:
    """Put a staged file or symlink at ``path``: written beside it, synced,
    then renamed over it, so a reader sees the old file or the new one."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.kps-new")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    if entry["type"] == "link":
        os.symlink(entry["target"], tmp)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    os.write(fd, chunk)
            os.fchmod(fd, int(entry["mode"], 8))
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(tmp, path)


# --------------------------------------------------------------------------
# The helper: `python -m tasks.journal apply JOURNAL` (through sudo)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "apply":
        print("usage: python -m tasks.journal apply JOURNAL", file=sys.stderr)
        return 2
    try:
        result = apply(json.loads(Path(argv[1]).read_text()))
    except (StackError, OSError, ValueError, KeyError) as err:
        print(str(err), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
