"""stack.lock: the commit each component's ref resolved to.

Like Cargo.lock, users commit it beside stack.yaml so that a tag or branch
means the same commit on every machine.  An entry applies while the
component's ``git`` and ``ref`` are the ones it was resolved for; a re-pin
makes a new entry.  ``doit update`` re-resolves on purpose.
"""

from __future__ import annotations

import os
import threading
import tomllib
from pathlib import Path

import tomlkit

from .state import atomic_write

HEADER = (
    "stack.lock: the commit each component's ref resolved to.\n"
    "Written by kata-passt-stack; commit it with stack.yaml.\n"
    "'doit update' (or 'doit update:NAME') re-resolves the refs on purpose."
)


class LockFile:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._cache: tuple[tuple, dict] | None = None

    def _read(self) -> dict[str, dict]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache and self._cache[0] == sig:
            return self._cache[1]
        try:
            data = tomllib.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        entries = data.get("components", {}) if isinstance(data, dict) else {}
        entries = {k: v for k, v in entries.items() if isinstance(v, dict)}
        self._cache = (sig, entries)
        return entries

    def entry(self, name: str) -> dict | None:
        return self._read().get(name)

    def commit_for(self, name: str, git: str, ref: str) -> str | None:
        """The locked commit, if the entry was made for this git URL and ref."""
        entry = self.entry(name)
        if entry and entry.get("git") == git and entry.get("ref") == ref:
            commit = entry.get("commit")
            return commit if isinstance(commit, str) else None
        return None

    def record(self, name: str, git: str, ref: str, commit: str, keep: set[str]) -> None:
        """Store ``commit`` for ``name``; entries not in ``keep`` are dropped."""
        with self._lock:
            entries = dict(self._read())
            if entries.get(name) == {"git": git, "ref": ref, "commit": commit} and \
                    set(entries) <= keep:
                return
            entries[name] = {"git": git, "ref": ref, "commit": commit}
            doc = tomlkit.document()
            for line in HEADER.splitlines():
                doc.add(tomlkit.comment(line))
            doc.add("version", 1)
            table = tomlkit.table(is_super_table=True)
            for key in sorted(entries):
                if key not in keep:
                    continue
                item = tomlkit.table()
                for field in ("git", "ref", "commit"):
                    item.add(field, str(entries[key].get(field, "")))
                table.add(key, item)
            doc.add("components", table)
            atomic_write(self.path, tomlkit.dumps(doc))
            self._cache = None
