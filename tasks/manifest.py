"""Staged installs: the merge into the target root, the record of what an
install wrote, and taking it back.

``install:PART`` runs its commands with ``DESTDIR`` set to a staging folder
(``Workspace.stage``); ``merge()`` then lays the staged tree onto the target
root (``settings.destdir``, or ``/`` for the live system) and records a
*manifest*: every file, symlink and folder of the stage, by its path on this
machine, with its mode and sha256 (``<workdir>/state/installs/manifests``).
``uninstall()`` removes what a manifest lists.

Every change to the target is first written down as a *journal* (what to
write, what to remove, which files to back up,
``<workdir>/state/installs/journals``), then carried out by
``journal.apply()``, which is idempotent: a run killed half-way leaves the
journal, and the next merge or uninstall carries it out again before
anything else, so the target converges.  Only that step touches the target;
when the target needs root (the live system, not root, ``sudo: auto``), it
runs as root through sudo (``python -m tasks.journal apply JOURNAL``, started
by run.py), and everything else (planning, records) stays with the user.

Rules the merge keeps:

* each file is written beside its target and renamed over it;
* a staged file or symlink that another part's manifest lists is refused
  before anything is written, naming both owners;
* a file that is there but no manifest lists (a distribution's) is copied to
  ``<workdir>/state/installs/backups/PART/...`` before it is replaced, and put
  back by uninstall; one identical to the staged file is taken over as it is;
* a reinstall removes what the previous manifest had and the new one has
  not, but keeps (and names) a file changed since it was installed; a
  changed file the new install replaces is saved first
  (``<workdir>/state/installs/saved/``);
* a folder is removed only when it is empty and one of our installs created
  it (``<workdir>/state/installs/dirs.json``);
* nothing is written, removed, backed up or put back outside the target
  root: each path is reached as a program chrooted into the root would
  reach it (a symbolic link's absolute target starts again at the root),
  and a path that cannot be reached so (a link whose ``..`` climbs above
  the root, links that loop, a link standing where a folder goes that
  leads to no folder inside the root) is refused before anything is
  written, naming the link and the file (``journal.problems``, checked
  when the merge or uninstall is planned and again when it is carried
  out);
* a file of ours may become a folder in the next version, and a folder we
  created (holding only our files) a file; a file or folder that no
  install recorded is never replaced by the other kind: that is refused.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

from . import git, inroot, journal, run
from .action import task_id
from .errors import StackError
from .state import JsonFile
from .workspace import Workspace

VERSION = 1
ROOT = Path(__file__).resolve().parent.parent  # where `python -m tasks.journal` runs
LIVE_ROOT_VAR = "KPS_LIVE_ROOT"  # for the tests: the live system's root (README)
_lock = threading.Lock()  # merges and uninstalls run one at a time


# --------------------------------------------------------------------------
# Where things land


def live_root() -> str:
    """``/``, or ``$KPS_LIVE_ROOT`` (the tests' stand-in for the live system)."""
    return os.path.abspath(os.environ.get(LIVE_ROOT_VAR) or "/")


def target_root(ws: Workspace) -> str:
    return ws.settings.destdir or live_root()


on_target = journal.on_target


def target(ws: Workspace, path: str) -> Path:
    """Where the target-system ``path`` is on this machine: under the
    target root, the links on the way followed inside it (what the merge
    wrote through ``lib64 -> /usr/lib`` is under the root's /usr/lib).
    The live root / needs no such care: the kernel does the same."""
    root = target_root(ws)
    where = on_target(root, path)
    if root == "/":
        return Path(where)
    t = inroot.Target(root)
    try:
        return Path(t.where(where))
    except (inroot.Blocked, ValueError, OSError):
        return Path(where)  # the merge refuses such a path; it is not ours


def key(part_id: str) -> str:
    return part_id.replace("/", "@")  # '@' is in no component or part name


def part_of(name: str) -> str:
    return name.replace("@", "/")


def record(ws: Workspace, part_id: str) -> JsonFile:
    """The manifest of ``install:PART``."""
    return ws.json("installs", "manifests", key(part_id))


def _journal(ws: Workspace, part_id: str) -> JsonFile:
    return ws.json("installs", "journals", key(part_id))


def _dirs(ws: Workspace) -> JsonFile:
    """Folders our installs created (only those are ever removed)."""
    return ws.json("installs", "dirs", kind=list)


def recorded(ws: Workspace) -> set[str]:
    """Every part with a manifest or an unfinished journal (no file is read)."""
    out = set()
    for which in ("manifests", "journals"):
        folder = ws.state / "installs" / which
        if folder.is_dir():
            out.update(part_of(p.name[:-5]) for p in folder.iterdir() if p.name.endswith(".json"))
    return out


# --------------------------------------------------------------------------
# Journals: written down first, carried out, then recorded


def _run_journal(ws: Workspace, part_id: str, j: dict, tid: str) -> dict:
    jf = _journal(ws, part_id)
    jf.write(j, indent=None)
    sudo = run.sudo_for(ws.settings.sudo, live=j["root"] == live_root())
    if sudo:
        argv = run.as_root([sys.executable, "-m", "tasks.journal", "apply", str(jf.path)],
                           True)
        run.say(f"  {tid}: $ {' '.join(argv)}")
        res = run.query(argv, cwd=ROOT, check=False)
        if res.code == journal.REFUSED:  # nothing was written: the journal is void
            jf.clear()
            raise StackError(res.err.strip())
        if not res.ok:
            raise StackError(f"{j['kind']} through sudo failed (exit code {res.code}): "
                             f"{res.err.strip() or res.out.strip()}",
                             hint=f"the journal {jf.path} is kept: the next run finishes it")
        try:
            result = json.loads(res.out)
        except ValueError:
            raise StackError(f"{j['kind']} through sudo said: {res.out.strip()[:200]}") from None
    else:
        try:
            result = journal.apply(j)
        except journal.Refused:  # nothing was written: the journal is void
            jf.clear()
            raise
    _finish(ws, part_id, j, result)
    jf.clear()
    return result


def _finish(ws: Workspace, part_id: str, j: dict, result: dict) -> None:
    if j["kind"] == "merge":
        missing = set(result["missing"])
        entries = {p: e for p, e in j["new"].items() if p not in missing}
        backups = {p: b for p, b in j["old_backups"].items()
                   if p in entries and p not in result["restored"]}
        backups.update(result["backups"])
        record(ws, part_id).write({
            "version": VERSION, "part": part_id, "component": part_id.split("/")[0],
            "root": j["root"], "time": time.time(), "entries": entries, "backups": backups,
        }, indent=0)
        if j.get("stage"):
            _wipe(Path(j["stage"]))
    else:
        record(ws, part_id).clear()
    dirs = _dirs(ws)
    known = set(dirs.read())
    changed = (known | set(result["created_dirs"])) - set(result["removed_dirs"])
    if changed != known:
        dirs.write(sorted(changed), indent=0)


def complete_pending(ws: Workspace) -> None:
    """Carry out the journals an interrupted run left (call with ``_lock``)."""
    folder = ws.state / "installs" / "journals"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        part_id = part_of(path.name[:-5])
        j = _journal(ws, part_id).read()
        if j.get("version") != VERSION:
            path.unlink()
            continue
        tid = task_id("install" if j["kind"] == "merge" else "uninstall", part_id)
        run.say(f"  {tid}: finishing what an interrupted run left half-done")
        j["ours"] = sorted(set(j["ours"]) | set(_dirs(ws).read()))
        _report(tid, j, _run_journal(ws, part_id, j, tid))


def _wipe(folder: Path) -> None:
    import shutil  # shutil pulls in bz2 and lzma: imported when used, not on a no-op

    def writable(func, path, _exc):
        os.chmod(os.path.dirname(path), 0o700)
        func(path)

    if folder.exists():
        shutil.rmtree(folder, onerror=writable)


def usable_root(ws: Workspace) -> str:
    """The target root, if it is a folder (or can become one)."""
    root = target_root(ws)
    bad = next((p for p in [Path(root), *Path(root).parents]
                if os.path.lexists(p) and not os.path.isdir(p)), None)
    if bad is not None:
        raise StackError(f"cannot install into {root}: {bad} is a file, not a folder",
                         hint="set settings.destdir to a folder (or \"\" for the live system)")
    return root


def fresh_stage(ws: Workspace, part_id: str) -> Path:
    """An empty staging folder for ``install:PART`` (after finishing any
    journal that still needs the old one), once the target root is usable."""
    usable_root(ws)
    with _lock:
        complete_pending(ws)
    stage = ws.stage(part_id)
    _wipe(stage)
    stage.mkdir(parents=True)
    return stage


# --------------------------------------------------------------------------
# Merge and uninstall


def _base(ws: Workspace, part_id: str, kind: str, root: str) -> dict:
    backups = ws.state / "installs"
    return {"version": VERSION, "kind": kind, "part": part_id, "root": root,
            "backups": str(backups / "backups" / key(part_id)),
            "saved": str(backups / "saved" / key(part_id) / time.strftime("%Y%m%d-%H%M%S")),
            "owner": [os.getuid(), os.getgid()], "ours": sorted(_dirs(ws).read())}


def merge(ws: Workspace, part_id: str, stage: Path, tid: str) -> dict:
    """Lay the staged tree onto the target root and record it."""
    root = usable_root(ws)
    new = journal.scan(stage, root)
    with _lock:
        complete_pending(ws)
        mine = record(ws, part_id).read()
        owners = {}
        for other in sorted(recorded(ws) - {part_id}):
            for path, e in record(ws, other).read().get("entries", {}).items():
                if e["type"] != "dir":
                    owners[path] = other
        moved = bool(mine.get("entries")) and mine.get("root", root) != root
        if moved:
            # Another destdir: each journal stays inside one root, so the old
            # install is taken back from its own root first (once the merge
            # is known not to be refused), then the new one merged as new.
            refuse(ws, part_id, _merge_journal(ws, part_id, root, stage, new, {}), owners)
            gone = _uninstall_journal(ws, part_id, mine)
            found = journal.problems(gone)
            if found:
                raise journal.refusal(gone, found)
            _report(task_id("uninstall", part_id), gone, _run_journal(ws, part_id, gone, tid))
            mine = {}
        j = _merge_journal(ws, part_id, root, stage, new, mine)
        refuse(ws, part_id, j, owners)
        result = _run_journal(ws, part_id, j, tid)
    _report(tid, j, result)
    return result


def _uninstall_journal(ws: Workspace, part_id: str, mine: dict) -> dict:
    """Taking back what manifest ``mine`` records, from the root it records."""
    return {**_base(ws, part_id, "uninstall", mine.get("root", target_root(ws))),
            "stage": None, "old": mine.get("entries", {}), "new": {},
            "old_backups": mine.get("backups", {}), "unowned": []}


def _merge_journal(ws: Workspace, part_id: str, root: str, stage: Path, new: dict,
                   mine: dict) -> dict:
    old = mine.get("entries", {})
    t = inroot.Target(root)
    unowned = [p for p, e in new.items()
               if e["type"] != "dir" and (p not in old or old[p]["type"] == "dir")
               and _there(t, p)]
    return {**_base(ws, part_id, "merge", root), "stage": str(stage), "old": old, "new": new,
            "old_backups": mine.get("backups", {}), "unowned": unowned}


def _there(t: inroot.Target, path: str) -> bool:
    """Whether a file, link or anything but a folder is at ``path``."""
    try:
        st = t.lstat(path)
    except PermissionError:
        return True  # behind a folder we cannot read: the merge (as root) looks
    except (inroot.Blocked, StackError):
        return False  # refused by journal.problems
    return st is not None and not stat.S_ISDIR(st.st_mode)


def refuse(ws: Workspace, part_id: str, j: dict, owners: dict) -> None:
    """Stop, before anything is written, when a staged path belongs to
    another part or cannot be put where it goes (``journal.problems``)."""
    found, others = [], set()
    for path, e in sorted(j["new"].items()):
        owner = owners.get(path)
        if owner is not None and e["type"] != "dir":
            found.append(("owner", f"{path} is installed by {owner}, and {part_id} installs it "
                                   "too"))
            others.add(owner)
    found += journal.problems(j)
    if not found:
        return
    hint = None
    if others:
        current = {p.id for c in ws.stack.components.values() for p in c.parts}
        gone = sorted(o for o in others if o not in current)
        hint = ("a file belongs to one component (or part): change the install commands of one "
                "of them, or uninstall the other first: "
                + ", ".join(f"doit {task_id('uninstall', o)}" for o in sorted(others)))
        if gone:
            hint += f" ({', '.join(gone)}: no longer in stack.yaml)"
    raise journal.refusal(j, found, hint)


def uninstall(ws: Workspace, part_id: str, tid: str, quiet: bool = False) -> dict | None:
    """Remove what ``install:PART`` recorded; drop its stamp, so the next
    run installs it again (from the artifacts there are: no rebuild)."""
    with _lock:
        complete_pending(ws)
        mine = record(ws, part_id).read()
        if not record(ws, part_id).exists():
            ws.stamps.clear(task_id("install", part_id))
            if not quiet:
                run.say(f"  {tid}: nothing recorded as installed by {part_id}")
            return None
        j = _uninstall_journal(ws, part_id, mine)
        found = journal.problems(j)
        if found:  # refused, nothing removed: the install stays as it is, stamp and all
            raise journal.refusal(j, found)
        ws.stamps.clear(task_id("install", part_id))
        result = _run_journal(ws, part_id, j, tid)
    _report(tid, j, result)
    return result


def _report(tid: str, j: dict, r: dict) -> None:
    say = run.say
    files = [p for p, e in j["new"].items() if e["type"] != "dir"]
    if j["kind"] == "merge" and (files or r["removed"]):
        say(f"  {tid}: merged {len(files)} file(s) into {j['root']}: {len(r['written'])} "
            f"written, {r['unchanged']} already in place"
            + (f", {len(r['removed'])} removed (no longer installed)" if r["removed"] else ""))
    elif j["kind"] != "merge":
        say(f"  {tid}: removed {len(r['removed'])} file(s) and {len(r['removed_dirs'])} "
            f"folder(s) from {j['root']}")
    for path in r["kept"]:
        backup = j["old_backups"].get(path)
        say(f"  {tid}: kept {path}: changed since it was installed"
            + (f" (the original it replaced is saved as {backup})" if backup else ""))
    for path, backup in sorted(r["backups"].items()):
        if j["old_backups"].get(path) != backup:
            say(f"  {tid}: {path} was there before and no component installed it: "
                f"saved as {backup}; {task_id('uninstall', j['part'])} puts it back")
    for path, saved in sorted(r["saved"].items()):
        say(f"  {tid}: {path} was changed since it was installed: replaced, your version "
            f"saved as {saved}")
    for path in r["restored"]:
        say(f"  {tid}: put back the original {path}")
    if r["missing"]:
        say(f"  {tid}: {len(r['missing'])} staged file(s) were gone; the install redoes them")


# --------------------------------------------------------------------------
# Leftovers: what components that left stack.yaml still have


def leftovers(ws: Workspace) -> list[str]:
    """One notice per component (or part) that is no longer in stack.yaml but
    still has installed files or a checkout.  Nothing is removed."""
    current = {p.id for c in ws.stack.components.values() for p in c.parts}
    parts = sorted(p for p in recorded(ws) if p not in current)
    checkouts = sorted(d.name for d in ws.src.iterdir()
                       if d.is_dir() and not d.name.startswith(".")
                       and d.name not in ws.stack.components) \
        if ws.src.is_dir() else []
    names = sorted({p.split("/")[0] for p in parts} | set(checkouts))
    out = []
    for name in names:
        mine = [p for p in parts if p.split("/")[0] == name]
        files, roots = 0, set()
        for p in mine:
            m = record(ws, p).read()
            entries = {**_journal(ws, p).read().get("new", {}), **m.get("entries", {})}
            files += sum(1 for e in entries.values() if e["type"] != "dir")
            roots.add(m.get("root", target_root(ws)))
        left, commands = [], []
        if mine:
            left.append(f"{files} installed file(s) (under {', '.join(sorted(roots))})")
            commands += [f"doit {task_id('uninstall', p)}" for p in
                         ([name] if name not in ws.stack.components else mine)]
        if name in checkouts:
            path = ws.checkout(name)
            edits = git.is_repo(path) and bool(git.local_edits(path))
            left.append(f"its checkout {path} ({'with' if edits else 'without'} local edits)")
            commands.append(f"rm -rf {path}" + (" (save the edits first)" if edits else ""))
        what = "part" if name in ws.stack.components else "component"
        who = ", ".join(mine) if name in ws.stack.components else name
        out.append(f"notice: {what} {who} is no longer in stack.yaml, but left "
                   f"{' and '.join(left)}; to remove: {'; '.join(commands)}")
    return out


def say_leftovers(ws: Workspace) -> None:
    for line in leftovers(ws):
        run.say(line)
