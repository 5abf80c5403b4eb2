"""What the tool remembers between runs, and the checks that read it.

Each task's last successful run leaves a *stamp*: the key it ran for (config,
commits, content fingerprints), written atomically by the action itself as
its last step and removed as its first.  doit's own database is written only
when a run ends, so after a ``kill -9`` it would forget every task that
finished in that run; stamps make each finished task durable at once, and a
task killed half-way has no stamp, so it can never look up to date.

The up-to-date checks are small classes with ``__call__(task, values)`` (the
doit protocol) that compare the key computed now with the stamp, and a
``__repr__`` saying in plain words what changed, which ``doit info`` prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import session
from .errors import StackError

_HASH_CHUNK = 1 << 20


def read_only() -> bool:
    """Whether the current run only reads (doit list, info, help, status...):
    the caches are not written, and any other write is a bug that fails
    loudly (``session.Run.read_only``)."""
    return session.read_only()


def umask() -> int:
    """This process's umask, read without changing it (os.umask() can only
    be read by setting it, which would race with another thread's files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str, mode: int | None = None,
                 owner: tuple[int, int] | None = None) -> None:
    """Write ``path`` so that a reader sees the old or the new content, never
    half of it, even if this process is killed."""
    import tempfile  # only when a temporary file or folder is made: not on a no-op
    if read_only():
        raise StackError(f"internal error: {path} written by a read-only command")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    if mode is None:  # an existing file keeps its mode, a new one honours the umask
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".kps-tmp", dir=path.parent)
    except OSError as err:  # name the file the user knows, not our temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None and (os.geteuid() == 0 or owner[0] == os.geteuid()):
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def digest(obj) -> str:
    """A short stable hash of a JSON-able value."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# --------------------------------------------------------------------------
# JSON state files


class JsonFile:
    """One JSON state file: read as a value of ``kind`` (anything else, a
    missing file or a damaged one reads as ``default``), written atomically.
    Every state file under the workdir goes through this."""

    def __init__(self, path: Path, kind: type = dict, default=None):
        self.path = path
        self.kind = kind
        self.default = default

    def read(self):
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return self._default()
        return data if isinstance(data, self.kind) else self._default()

    def _default(self):
        if self.default is not None:
            return self.default
        return self.kind() if self.kind in (dict, list) else None

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, data, indent: int | None = 1, sort_keys: bool = True) -> None:
        atomic_write(self.path, json.dumps(data, indent=indent, sort_keys=sort_keys))

    def update(self, **values) -> dict:
        data = {**self.read(), **values}
        self.write(data)
        return data

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# Stamps


class Stamps:
    """One JSON file per task under ``<workdir>/state/stamps``: ``key`` (what
    the task ran for) and what it produced (``installed``, ``kernel``...),
    which the tasks that depend on it read through ``produced()``."""

    def __init__(self, root: Path):
        self.root = root

    def _file(self, task_id: str) -> JsonFile:
        return JsonFile(self.root / (task_id.replace(":", "@").replace("/", "@") + ".json"))

    def read(self, task_id: str) -> dict | None:
        return self._file(task_id).read() or None

    def produced(self, task_id: str, name: str):
        """What a finished task recorded as ``name``, or None."""
        stamp = self.read(task_id)
        return stamp.get(name) if stamp else None

    def write(self, task_id: str, key: dict, **produced) -> None:
        record = {"task": task_id, "key": key, "time": time.time(), **produced}
        self._file(task_id).write(record)

    def clear(self, task_id: str) -> None:
        self._file(task_id).clear()

    def ids(self) -> list[str]:
        """The tasks that have a stamp."""
        out = []
        for f in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            stamp = JsonFile(f).read()
            if isinstance(stamp.get("task"), str):
                out.append(stamp["task"])
        return out


def explain(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Plain-words differences between two keys."""
    out = []
    for k in sorted(set(old) | set(new)):
        name = f"{prefix}{k}"
        if k not in old:
            out.append(f"{name} is new")
        elif k not in new:
            out.append(f"{name} was removed")
        elif old[k] != new[k]:
            a, b = old[k], new[k]
            if isinstance(a, dict) and isinstance(b, dict):
                out.extend(explain(a, b, name + "."))
            else:
                out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def in_words(old: dict, new: dict) -> str:
    """What differs between two keys, in plain words (six changes at most)."""
    changes = explain(old, new)
    return "; ".join(changes[:6]) + (" ..." if len(changes) > 6 else "")


def _nothing_missing() -> None:
    return None


def _as_they_are(old: dict, new: dict) -> tuple[dict, dict]:
    return old, new


def _never(stamp: dict, now: dict) -> bool:
    return False


class Check:
    """doit ``uptodate`` check: up to date when ``key()`` equals the stamp's
    key and no output is ``missing()``.  As doit's ``config_changed`` takes a
    config, it takes the functions that say what its task depends on; they
    live in the step module, and every task's check is this one class.

    ``key()`` is the key now (it may raise ``StackError`` to say "stale,
    because..."), ``missing()`` why an output that must exist is not there
    (or None).  ``compare(old, new)`` gives both keys as they should be
    compared, ``equivalent(stamp, now)`` whether keys that differ still mean
    the same, ``changed(old, new)`` what differs in words; ``part`` is the
    part checked, if any.  ``compared`` keeps the last (stamp key, key now)
    compared, ``task`` the doit task (its ``task_dep``), for
    ``tasks/plan.py``.  The loader keeps every check of a run by task id
    (``session.Run.checks``); a read-only run asks its planner in their
    place (``plan.Predicted``).
    """

    def __init__(self, stamps: Stamps, task_id: str, key: Callable[[], dict],
                 missing: Callable[[], str | None] = _nothing_missing, *,
                 compare: Callable[[dict, dict], tuple[dict, dict]] = _as_they_are,
                 equivalent: Callable[[dict, dict], bool] = _never,
                 changed: Callable[[dict, dict], str] = in_words, part=None):
        self.stamps = stamps
        self.task_id = task_id
        self.key, self.missing = key, missing
        self.compare, self.equivalent, self.changed = compare, equivalent, changed
        self.part = part
        self.reason = "not checked yet"
        self.compared: tuple[dict, dict] | None = None
        self.task = None

    def configure_task(self, task) -> None:  # doit calls it when the task is made
        self.task = task

    def __call__(self, task=None, values=None) -> bool:
        self.compared = None
        stamp = self.stamps.read(self.task_id)
        if stamp is None:
            self.reason = "never ran, or its last run did not finish"
            return False
        try:
            now = self.key()
        except StackError as err:
            self.reason = err.message
            return False
        self.compared = self.compare(stamp.get("key", {}), now)
        changes = explain(*self.compared)
        if changes and self.equivalent(stamp, now):
            changes = []
        if changes:
            self.reason = self.changed(*self.compared)
            return False
        gone = self.missing()
        if gone:
            self.reason = gone
            return False
        self.reason = "up to date"
        return True

    def __repr__(self) -> str:
        return f"{self.task_id}: {self.reason}"


# --------------------------------------------------------------------------
# Content fingerprints


class HashCache:
    """Content hashes of files, reused while (size, mtime, ctime, inode) hold.

    Entries younger than two seconds are not trusted (an edit within the same
    timestamp tick would go unseen), as git does for its index.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list] | None = None
        self._dirty = False

    def _load(self) -> dict:
        if self._data is None:
            self._data = JsonFile(self.path).read()
        return self._data

    def fingerprint(self, path: Path) -> str:
        """``f:<hash>`` for a file, ``l:<target>`` for a symlink, ``d`` for a
        folder, ``-`` for nothing there."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "-"
        except OSError as err:
            return f"error:{err.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return "l:" + os.readlink(path)
        if stat.S_ISDIR(st.st_mode):
            return "d"
        if not stat.S_ISREG(st.st_mode):
            return f"special:{stat.S_IFMT(st.st_mode)}"
        mode = "x" if st.st_mode & 0o111 else ""
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        key = str(path)
        with self._lock:
            cached = self._load().get(key)
        if cached and cached[:4] == sig:
            return f"f{mode}:{cached[4]}"
        h = hashlib.blake2b(digest_size=16)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
        except OSError as err:
            return f"error:{err.strerror}"
        value = h.hexdigest()
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > 2_000_000_000:
            with self._lock:
                self._load()[key] = sig + [value]
                self._dirty = True
        return f"f{mode}:{value}"

    def save(self) -> None:
        if read_only():
            return
        with self._lock:
            if not self._dirty or self._data is None:
                return
            data = dict(self._data)
            self._dirty = False
        try:
            JsonFile(self.path).write(data, indent=None, sort_keys=False)
        except OSError:
            pass  # only a cache
