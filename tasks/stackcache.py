"""The validated stack, kept between runs.

Validation (``tasks/spec``) costs ~150 ms of pydantic model building, a
quarter of a no-op, so ``validated()`` keeps the validated ``Stack`` in a
cache under the workdir (``<workdir>/state/stack.pickle``) keyed by the
file's bytes and the environment validation reads (HOME, CPU count), and
uses it only while

* the files validation looked at (patches, pod templates) still exist or
  not as they did, and
* the code that validated it is the same: the content of every module of
  ours loaded when validation ended (``tasks.spec``, ``tasks.model``, the
  URL rules, the prerequisite catalogue, and whatever they import), taken
  from ``sys.modules`` then and recorded in the entry, never from a list
  kept by hand.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from . import state
from .model import Stack

CACHE_VERSION = 3


def load(path, project: Path | None = None, store: bool = True) -> Stack:
    """The validated stack at ``path`` (``SpecError`` if it is invalid),
    kept in the cache when ``store``."""
    stack, keep = validated(path, project)
    if store:
        keep()
    return stack


def validated(path, project: Path | None = None) -> tuple[Stack, Callable[[], None]]:
    """The validated stack at ``path`` (``SpecError`` if it is invalid), and
    what keeps it in the cache (nothing to do when it came from there): a
    read-only run calls it never, another run once it holds the workdir."""
    path = Path(path).absolute()
    try:
        data = path.read_bytes()
    except OSError:
        data = None  # let validation say what is wrong
    cache = cache_file(path, data) if data is not None else None
    key = _key(path, project, data) if cache else None
    if key:
        stack = _cached(cache, key)
        if stack is not None:
            return stack, _nothing
    from . import spec  # pydantic only when something changed

    stack, checked = spec.validate(path, project=project)
    code = code_files()

    def keep() -> None:
        if key and cache.parent.parent == stack.settings.workdir:
            _store(cache, {"key": key, "stack": stack, "files": checked,
                           "code": [(f, _digest(f)) for f in code]})

    return stack, keep


def _nothing() -> None:
    pass


def code_files() -> list[str]:
    """The files of every module of ours loaded now (after a validation:
    the code that made its result)."""
    files = set()
    for name, module in list(sys.modules.items()):
        if name == "tasks" or name.startswith("tasks."):
            file = getattr(module, "__file__", None)
            if file:
                files.add(file)
    return sorted(files)


def _digest(file: str) -> str | None:
    try:
        with open(file, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    except OSError:
        return None


def cache_file(path: Path, data: bytes) -> Path | None:
    """``<workdir>/state/stack.pickle``, the workdir read from the file with
    a plain YAML parse (the full validation is what the cache saves)."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(data, Loader=loader)
        workdir = ((doc.get("settings") or {}).get("workdir") or "build")
        if not isinstance(workdir, str):
            return None
    except Exception:  # noqa: BLE001 - validation will say what is wrong
        return None
    folder = Path(os.path.normpath(path.parent / os.path.expanduser(workdir)))
    return folder / "state" / "stack.pickle"


def _key(path: Path, project: Path | None, data: bytes) -> str:
    facts = (CACHE_VERSION, str(path), str(project), os.environ.get("HOME"), os.cpu_count(),
             sys.version_info[:2], hashlib.sha256(data).hexdigest())
    return hashlib.sha256(repr(facts).encode()).hexdigest()


def _cached(cache: Path, key: str) -> Stack | None:
    try:
        with open(cache, "rb") as f:
            entry = pickle.load(f)
        if entry["key"] != key:
            return None
        for name, was_file in entry["files"]:
            if os.path.isfile(name) != was_file:
                return None
        for file, digest in entry["code"]:
            if _digest(file) != digest:
                return None
        return entry["stack"]
    except Exception:  # a missing, old or damaged cache is just a miss
        return None


def _store(cache: Path, entry: dict) -> None:
    try:
        state.atomic_write(cache, pickle.dumps(entry))
    except OSError:
        pass  # only a cache
