"""Carrying out a journal: the file operations of a merge or an uninstall.

A journal (written by manifest.py) says what the target must become: the
old manifest's entries, the new ones, the staging folder they come from,
which files to back up.  ``apply()`` makes it so and can be run again after
a kill: whatever is already done is seen as done.  It needs only the
standard library, because it runs as root through sudo when the target
needs it, as ``python -m tasks.journal apply JOURNAL`` (started by
manifest.py through run.py); it prints what it did as JSON.

Nothing is written, removed, backed up or put back outside the target root.
Every path is reached the way a program chrooted into the root would reach
it (``inroot.Target``): each symbolic link met on the way is followed, a link's
absolute target starts again at the root, and ``..`` never goes above it.
A path that cannot be reached that way is refused before anything is
written (``problems()``), naming the link and the file:

* a link whose ``..`` climbs above the root (the live root ``/`` has
  nothing above it: there ``..`` stays at ``/``, as the kernel does);
* links that loop;
* a link where the install puts a folder, unless it leads to a folder
  inside the root: folders are made where the stage has them, never at the
  other end of a link (``share/x -> /elsewhere`` with no ``/elsewhere``
  inside the root is refused, whatever ``/elsewhere`` holds on this
  machine).

``apply()`` checks again (the target may have changed since the journal
was planned), then each operation opens the folders on its way one by one
without following links, so a folder swapped for a link after the check
stops it instead of being written through.

What the old manifest lists may change type: a file or link of ours gives
way to a folder of the new install, and a folder our installs created,
holding only what the old manifest lists, gives way to a file; a changed
file in the way is saved first, like any changed file an install replaces.
A file or folder that no install recorded is never replaced by the other
kind: the install is refused.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from .errors import StackError
from .inroot import Blocked, Changed, Target, lstat, sha256_of


def on_target(root: str, path: str) -> str:
    """Where the target-system ``path`` is on this machine."""
    return root.rstrip("/") + path


# --------------------------------------------------------------------------
# What a tree holds


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


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


def _same(t: Target, path: str, st: os.stat_result, entry: dict, mode: bool = False) -> bool:
    """Whether ``path`` holds what ``entry`` says (its mode too, with ``mode``)."""
    if entry["type"] == "link":
        return stat.S_ISLNK(st.st_mode) and t.readlink(path) == entry["target"]
    if entry["type"] == "dir":
        return t.isdir(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
        return False
    if mode and f"{stat.S_IMODE(st.st_mode):04o}" != entry["mode"]:
        return False
    return t.sha256(path) == entry["sha256"]


def _same_as_backup(t: Target, path: str, backup: str) -> bool:
    sa, sb = t.lstat(path), lstat(backup)
    if sa is None or sb is None or stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return t.readlink(path) == os.readlink(backup)
    return sa.st_size == sb.st_size and t.sha256(path) == sha256(backup)


# --------------------------------------------------------------------------
# What stops a journal, before anything is written


class Refused(StackError):
    """Nothing was written: each thing in the way, all at once."""


def refusal(j: dict, found: list[tuple[str, str]], hint: str | None = None) -> Refused:
    """The error for ``found`` (kind, line) pairs: kind ``link`` (a path
    that cannot be reached inside the root) or ``way`` (something in the way
    of a file or folder)."""
    kinds = {kind for kind, _ in found}
    hints = [hint] if hint else []
    root = j["root"].rstrip("/") or "/"
    if "link" in kinds:
        hints.append(f"symbolic links under {root} are followed as if {root} were / (an "
                     f"absolute target starts again at {root}) and may not lead out of it: make "
                     "each link named lead to a folder inside it, or remove it")
    if "way" in kinds:
        hints.append("what no install recorded is yours: move it away, or change the install "
                     "commands")
    lines = [line for _, line in found]
    shown = "\n".join(f"  {line}" for line in lines[:20])
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    verb = "written" if j["kind"] == "merge" else "removed"
    return Refused(f"refused, nothing {verb}:\n{shown}{more}", hint="; ".join(hints))


def _goes(path: str, e: dict, new: dict) -> bool:
    """Whether step 1 removes the old file or link ``path``: the new
    install has nothing there, or a folder."""
    return e["type"] != "dir" and new.get(path, {}).get("type") in (None, "dir")


def problems(j: dict) -> list[tuple[str, str]]:
    """What stops journal ``j`` before anything is written, as (kind, line)
    pairs (see ``refusal``): a path that cannot be reached inside the root,
    a link where a folder goes that does not lead to one inside the root, a
    file or folder no install recorded where the other kind goes.  A path
    this user may not look at is left to the check as root."""
    t = Target(j["root"])
    old, new, ours = j["old"], j["new"], set(j["ours"])
    found: list[tuple[str, str]] = []
    blamed: dict[tuple[str, str], tuple[int, set]] = {}  # one line per link, its first file

    def blame(b: Blocked, path: str, verb: str) -> None:
        key = (b.link, b.target)
        if key not in blamed:
            blamed[key] = (len(found), set())
            found.append(("link", b.say(path, verb, t.root)))
        blamed[key][1].add(path)

    def reach(path: str, verb: str, last: bool = False, absent=frozenset()) -> list | None:
        try:
            return t.resolve(path, last, absent)
        except Blocked as b:
            blame(b, path, verb)
        except PermissionError:
            pass
        return None

    def state(parts: list[str], absent) -> os.stat_result | None:
        """What is at ``parts`` (resolved), once the journal's removals are done."""
        if any(t.at(parts[:i + 1]) in absent for i in range(len(parts))):
            return None
        try:
            return lstat(t.at(parts))
        except PermissionError:
            return None

    absent = set()
    for path, e in sorted(old.items()):
        if e["type"] == "dir" and new.get(path, {}).get("type") != "dir":
            reach(path, "removed")
        elif _goes(path, e, new) and (parts := reach(path, "removed")):
            absent.add(t.at(parts))
    first_under = {}  # a folder's first file, named when a link stands in for the folder
    for path in sorted(new, key=lambda p: (new[p]["type"] == "dir", p)):
        for parent in _parents(path, t.base):
            first_under.setdefault(parent, path)
    for path, e in sorted(new.items()):
        parts = reach(path, "written", absent=absent)
        st = None if parts is None else state(parts, absent)
        if st is None:
            continue
        here = t.at(parts)
        if e["type"] == "dir" and stat.S_ISLNK(st.st_mode):
            through = first_under.get(path, path)
            try:
                inner = t.resolve(path, True, absent)
            except Blocked as b:
                blame(b, through, "written")
                continue
            end = state(inner, absent)
            if end is None or not stat.S_ISDIR(end.st_mode):
                target = os.readlink(here)
                more = sum(1 for p in new if p.startswith(path + "/")) - 1
                found.append(("link", f"{here} -> {target}: {through} would be written through "
                                      f"it, and there is no folder {target} inside {t.root} "
                                      f"({t.at(inner)})"
                                      + (f" (and {more} more through it)" if more > 0 else "")))
        elif e["type"] == "dir" and not stat.S_ISDIR(st.st_mode):
            found.append(("way", f"{here} is a file on the target; {j['part']} installs a folder "
                                 "there"))
        elif e["type"] != "dir" and stat.S_ISDIR(st.st_mode):
            why = _not_ours(here, path, old, ours)
            if why:
                found.append(("way", f"{here} is a folder on the target; {j['part']} installs a "
                                     f"file there, and {why}"))
    for i, paths in blamed.values():
        if len(paths) > 1:
            found[i] = (found[i][0], f"{found[i][1]} (and {len(paths) - 1} more through it)")
    return found


def _not_ours(here: str, path: str, old: dict, ours: set) -> str | None:
    """Why the folder ``here`` (the old manifest's ``path``) cannot give way
    to a file: None when our installs created it and everything in it is
    the old manifest's (what is changed in it is saved first)."""
    if old.get(path, {}).get("type") != "dir":
        return "the folder is not the previous install's"
    if path not in ours:
        return "the folder was there before the install"
    for folder, dirs, files in os.walk(here):
        for name in sorted(dirs) + sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), here)
            e = old.get(f"{path}/{rel}")
            if e is None:
                return f"the folder holds {here}/{rel}, which no install recorded"
            if e["type"] == "dir" and name in dirs and f"{path}/{rel}" not in ours:
                return f"the folder holds {here}/{rel}, a folder that was there before the install"
    return None


def _parents(path: str, base: str):
    """The folders above ``path``, up to (not including) the root."""
    while True:
        path = os.path.dirname(path)
        if len(path) <= len(base):
            return
        yield path


# --------------------------------------------------------------------------
# Carrying out a journal (as root when the target needs it)


def apply(j: dict) -> dict:
    """Make the target match journal ``j``: remove what the old manifest had
    and the new one has not, create the new folders, put each new file and
    symlink in place.  Refused (``Refused``, nothing written) when
    ``problems()`` finds any.  Idempotent; returns what it did."""
    try:
        found = problems(j)
        if found:
            raise refusal(j, found)
        return _apply(j, Target(j["root"]))
    except PermissionError as err:
        raise StackError(f"cannot change {err.filename}: permission denied",
                         hint="run as root, or set settings.sudo: auto") from None
    except Blocked as b:  # a link that appeared since the check
        raise Changed(f"{b.link} -> {b.target} appeared while the {j['kind']} was being carried "
                      f"out, and leads out of {j['root']} (or loops): stopped there",
                      hint="something else is changing the target root: find it, then run "
                           "again (the journal is kept and finished next time)") from None


def _apply(j: dict, t: Target) -> dict:
    root, stage, old, new = j["root"], j.get("stage"), j["old"], j["new"]
    old_backups, unowned, ours = j.get("old_backups", {}), set(j["unowned"]), set(j["ours"])
    owner = tuple(j["owner"]) if j.get("owner") else None
    cut = len(root.rstrip("/"))
    out = {"written": [], "unchanged": 0, "removed": [], "kept": [], "restored": [],
           "backups": {}, "saved": {}, "adopted": [], "created_dirs": [], "removed_dirs": [],
           "missing": []}

    def needed(path: str) -> bool:
        """Whether the new install puts a folder at ``path`` or a file above it."""
        return new.get(path, {}).get("type") == "dir" or any(
            new.get(p, {}).get("type") not in (None, "dir") for p in _parents(path, t.base))

    def save(path: str) -> None:
        saved = _under(j["saved"], path[cut:])
        if not os.path.lexists(saved):
            t.copy_out(path, saved, owner)
        out["saved"][path] = saved

    # 1. files and symlinks the old install had and the new one has not
    #    (or has a folder in their place)
    for path, e in sorted(old.items()):
        if not _goes(path, e, new):
            continue
        backup = old_backups.get(path)
        st = t.lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):  # a folder now: made by a killed run
            if not needed(path):                       # (or by hand)
                out["kept"].append(path)
            continue
        if st is not None and not _same(t, path, st, e):
            if backup and _same_as_backup(t, path, backup):  # put back before a kill
                os.unlink(backup)
                out["restored"].append(path)
                continue
            if not needed(path):
                out["kept"].append(path)
                continue
            save(path)  # changed, and in the way of what the new install puts there
        if st is not None:
            t.unlink(path)
            out["removed"].append(path)
        if backup and os.path.lexists(backup) and not needed(path):
            t.copy_in(backup, path)
            os.unlink(backup)
            out["restored"].append(path)
    # 2. folders left empty, deepest first
    gone = [p for p, e in old.items() if e["type"] == "dir" and new.get(p, {}).get("type") != "dir"]
    for path in sorted(gone, key=lambda p: (p.count("/"), p), reverse=True):
        if path not in ours:
            continue
        st = t.lstat(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            continue  # a link or a file now: not the folder we made
        if st is not None:
            try:
                t.rmdir(path)
            except OSError:
                continue  # not empty: someone else's files are in it
        out["removed_dirs"].append(path)
        backup = old_backups.get(path)  # the file a folder of ours replaced
        if backup and os.path.lexists(backup) and path not in new:
            t.copy_in(backup, path)
            os.unlink(backup)
            out["restored"].append(path)
    if new and not os.path.isdir(root):
        os.makedirs(root)
    # 3. the new folders, parents first
    for path, e in sorted(new.items()):
        if e["type"] != "dir" or t.isdir(path):
            continue
        if t.lstat(path) is not None:
            raise StackError(f"{path} is in the way: a folder is to be installed there")
        t.mkdir(path, int(e["mode"], 8))
        out["created_dirs"].append(path)
    # 4. files and symlinks
    for path, e in sorted(new.items()):
        if e["type"] == "dir":
            continue
        backup = _under(j["backups"], path[cut:])
        st = t.lstat(path)
        if st is not None and _same(t, path, st, e, mode=True):
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
                    t.copy_out(path, backup, owner)
                out["backups"][path] = backup
            elif path in old and not _same(t, path, st, old[path]):
                save(path)
        if e["type"] == "link":
            t.put(path, link=e["target"])
        else:
            t.put(path, data=src, mode=int(e["mode"], 8))
        out["written"].append(path)
    return out


def _under(folder: str, path: str) -> str:
    return folder.rstrip("/") + path


# --------------------------------------------------------------------------
# The helper: `python -m tasks.journal apply JOURNAL` (through sudo)


REFUSED = 3  # the exit status of a refused journal: nothing was written


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "apply":
        print("usage: python -m tasks.journal apply JOURNAL", file=sys.stderr)
        return 2
    try:
        result = apply(json.loads(Path(argv[1]).read_text()))
    except Refused as err:
        print(str(err), file=sys.stderr)
        return REFUSED
    except (StackError, OSError, ValueError, KeyError) as err:
        print(str(err), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
