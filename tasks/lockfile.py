"""stack.lock: the commit each component's ref resolved to.

Like Cargo.lock, users commit it beside stack.yaml so that a tag or branch
means the same commit on every machine.  An entry applies while the
component's ``git`` and ``ref`` are the ones it was resolved for; a re-pin
makes a new entry.  ``doit update`` re-resolves on purpose.

The lock is ``Stack.lock_path``: ``stack.yaml`` with the suffix ``.lock``
(``stack.lock``), or the stack file's name plus ``.lock`` when that would be
the stack file itself (``my.lock`` -> ``my.lock.lock``).  It records the name of the stack
file it belongs to, so two stack files that would share one (``stack.yaml``
and ``stack.yml``) stop with a message instead of deleting each other's
entries.  A lock that cannot be read (a merge conflict, garbage) stops the
run before anything runs: treating it as empty would take moved tags
without a word.
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
from pathlib import Path

import tomlkit

from .errors import StackError
from .state import atomic_write

HEADER = (
    "stack.lock: the commit each component's ref resolved to.\n"
    "Written by kata-passt-stack; commit it with stack.yaml.\n"
    "'doit update' (or 'doit update:NAME') re-resolves the refs on purpose."
)
_CONFLICT = re.compile(r"^(<{7}|={7}|>{7}|\|{7})( |$)", re.M)
_LINE = re.compile(r"at line (\d+)")


class LockError(StackError):
    """stack.lock cannot be read, or belongs to another stack file."""


class LockFile:
    def __init__(self, path: Path, stack_name: str | None = None):
        self.path = path
        self.stack_name = stack_name  # the stack file's name, recorded in the lock
        self._lock = threading.Lock()
        self._cache: tuple[tuple, dict] | None = None

    def _parse(self) -> dict:
        """The lock's TOML, or a ``LockError`` saying what is wrong and where."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            raise LockError(f"{self.path}: cannot read: {err}") from None
        hint = (f"resolve it (keep one commit per component), or delete {self.path.name} to "
                "re-resolve every ref on purpose")
        conflict = _CONFLICT.search(text)
        if conflict:
            line = text.count("\n", 0, conflict.start()) + 1
            raise LockError(f"{self.path.name}:{line}: a merge conflict marker "
                            f"({conflict.group(1)[:7]})", hint="the lock has an unresolved "
                            f"merge conflict: {hint}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            m = _LINE.search(str(err))
            line = m.group(1) if m else "?"
            raise LockError(f"{self.path.name}:{line}: not valid TOML: {err}",
                            hint=f"the lock is damaged: {hint}") from None
        if not isinstance(data.get("components", {}), dict):
            raise LockError(f"{self.path.name}: 'components' must be a table", hint=hint)
        owner = data.get("stack")
        if self.stack_name and isinstance(owner, str) and owner != self.stack_name:
            raise LockError(
                f"{self.path} belongs to the stack file {owner}, not {self.stack_name}: two "
                "stack files in one folder would share it",
                hint=f"give {self.stack_name} a folder of its own (or another name than "
                     f"{owner}'s stem), or delete {self.path.name} if {owner} is gone")
        return data

    def check(self) -> None:
        """Raise ``LockError`` now if the lock cannot be used (before any task)."""
        self._read()

    def _read(self) -> dict[str, dict]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache and self._cache[0] == sig:
            return self._cache[1]
        entries = {k: v for k, v in self._parse().get("components", {}).items()
                   if isinstance(v, dict)}
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
        if not isinstance(commit, str) or not commit:
            raise StackError(f"internal error: no commit to lock for {name}")
        with self._lock:
            entries = dict(self._read())
            if entries.get(name) == {"git": git, "ref": ref, "commit": commit} and \
                    set(entries) <= keep and self._owner_recorded():
                return
            entries[name] = {"git": git, "ref": ref, "commit": commit}
            doc = tomlkit.document()
            for line in HEADER.splitlines():
                doc.add(tomlkit.comment(line))
            doc.add("version", 1)
            if self.stack_name:
                doc.add("stack", self.stack_name)
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

    def _owner_recorded(self) -> bool:
        return not self.stack_name or self._parse().get("stack") == self.stack_name
