"""The stack as the code uses it, and ``load()``: validated once, then cached.

``tasks/spec.py`` validates stack.yaml with pydantic and returns a frozen
``Stack``; that costs ~150 ms of model building on every run, a quarter of
a no-op.  ``load()`` keeps the validated ``Stack`` in a cache under
``~/.cache/kata-passt-stack`` keyed by the file's bytes, the validator's
code and the environment it reads (HOME, CPU count), and uses it only while
the files validation looked at (patches, pod templates) still exist or not
as they did.  Anything else goes through full validation.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

# Variables a config's `set` values may use (tasks/configs.py gives their values).
VARIABLES = {
    "image.kernel": "the kernel mbuto named for the image",
    "image.initrd": "the image mbuto built",
    "settings.prefix": "settings.prefix",
    "settings.destdir": "settings.destdir",
    "detect.virtiofsd": "the first executable virtiofsd found",
    "qemu.path": "QEMU, or the logging wrapper when debug.qemu_log is true",
    "debug.kernel_params": "console=ttyS0 when debug.qemu_log is true, else empty",
    "debug.agent_debug_console": "debug.agent_debug_console (a boolean)",
}
VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")  # $${ escapes
WRAPPER = "qemu-wrapper"  # config:qemu-wrapper (debug.qemu_log); no config may take the name


def variables_in(value, where: tuple = ()):
    """``(location, name)`` of every ``${name}`` used in a set value."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from variables_in(v, where + (str(key),))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from variables_in(v, where + (i,))
    elif isinstance(value, str):
        for m in VAR_RE.finditer(value):
            if m.group(1) is not None:
                yield where, m.group(1).strip()



# --------------------------------------------------------------------------
# What the code uses


@dataclass(frozen=True)
class Patch:
    path: str  # as written
    component: str | None  # None: relative to the stack file's folder
    file: Path | None  # resolved file when it lives beside stack.yaml


@dataclass(frozen=True)
class Part:
    component: str
    name: str | None  # None for a component without parts
    build: tuple[str, ...]
    artifacts: tuple[str, ...]
    install: tuple[str, ...]
    installs: tuple[str, ...]  # absolute target paths, ${PREFIX} expanded
    env: tuple[tuple[str, str], ...]
    requires: tuple[str, ...] = ()  # the component's and the part's own

    @property
    def id(self) -> str:
        """``NAME`` or ``NAME/PART``: the doit sub-task name."""
        return self.component if self.name is None else f"{self.component}/{self.name}"


@dataclass(frozen=True)
class Component:
    name: str
    git: str
    ref: str
    submodules: bool | tuple[str, ...]  # True: all, recursively; a tuple: those paths
    depth: int
    patches: tuple[Patch, ...]
    needs: tuple[str, ...]
    parts: tuple[Part, ...]
    line: int

    def patch_sources(self) -> tuple[str, ...]:
        """Components whose checkouts hold some of our patches."""
        seen = []
        for p in self.patches:
            if p.component and p.component not in seen:
                seen.append(p.component)
        return tuple(seen)


@dataclass(frozen=True)
class Settings:
    workdir: Path
    destdir: str
    prefix: str
    sudo: str
    jobs: int


@dataclass(frozen=True)
class Image:
    builder: str
    profile: str
    output: Path
    compression: str
    kernel: str  # "auto" or a version
    modules_root: str
    add: tuple[str, ...]
    needs: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    name: str
    path: str  # on the target system
    format: str
    base: str | None  # on the target system
    set: dict
    unset: tuple[str, ...]
    needs: tuple[str, ...]  # component names, or "image"
    create_only: bool


@dataclass(frozen=True)
class Pod:
    runtime: str
    image: str
    command: tuple[str, ...]
    pod_config: Path
    container_config: Path
    crio_args: tuple[str, ...]
    ping: bool
    socket: str
    start_timeout: int


@dataclass(frozen=True)
class Debug:
    qemu_log: bool
    agent_debug_console: bool


@dataclass(frozen=True)
class Stack:
    path: Path
    settings: Settings
    components: dict[str, Component]
    image: Image | None = None
    configs: dict[str, Config] = dataclass_field(default_factory=dict)
    pod: Pod | None = None
    debug: Debug = Debug(False, False)
    project: Path | None = None  # this tool's folder (templates in configs/)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def target(self, path: str) -> Path:
        """Where a target-system path lands (under destdir when staged)."""
        if self.settings.destdir:
            return Path(self.settings.destdir + path)
        return Path(path)


# --------------------------------------------------------------------------
# Loading, with a cache

CACHE_VERSION = 1
_CODE = ("spec.py", "stack.py", "yamlsrc.py", "prereqs.py")


def load(path, project: Path | None = None) -> Stack:
    """The validated stack at ``path`` (``SpecError`` if it is invalid)."""
    path = Path(path).absolute()
    try:
        data = path.read_bytes()
    except OSError:
        data = None  # let validation say what is wrong
    cache = _cache_file(path)
    key = _key(path, project, data) if data is not None and cache else None
    if key:
        stack = _cached(cache, key)
        if stack is not None:
            return stack
    from . import spec  # pydantic only when something changed

    stack = spec.load_stack(path, project=project)
    if key:
        _store(cache, key, stack, list(spec.checked_files))
    return stack


def _cache_file(path: Path) -> Path | None:
    root = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["HOME"], ".cache") if os.environ.get("HOME") else None)
    if not root:
        return None
    name = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    return Path(root) / "kata-passt-stack" / f"{name}.pickle"


def _key(path: Path, project: Path | None, data: bytes) -> str:
    here = Path(__file__).parent
    code = []
    for name in _CODE:
        try:
            st = os.stat(here / name)
            code.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            code.append((name, None, None))
    facts = (CACHE_VERSION, str(path), str(project), os.environ.get("HOME"), os.cpu_count(),
             sys.version_info[:2], code, hashlib.sha256(data).hexdigest())
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
        return entry["stack"]
    except Exception:  # a missing, old or damaged cache is just a miss
        return None


def _store(cache: Path, key: str, stack: Stack, files: list) -> None:
    from .state import atomic_write

    try:
        atomic_write(cache, pickle.dumps({"key": key, "stack": stack, "files": files}))
    except OSError:
        pass  # only a cache
