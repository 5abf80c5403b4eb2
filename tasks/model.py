"""The stack as the code uses it: frozen dataclasses, made once by
``tasks/spec`` from stack.yaml and never changed.  Nothing here reads files
or runs anything."""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

# Variables a config's `set` values may use (tasks/steps/configs.py gives their values).
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


# OCI names (the distribution spec's): the spec refuses a cache url by this
# rule and the registry client (host/cache/oci.py) reads it by the same one.
OCI_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                            r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_OCI_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")


def split_cache_url(url: str) -> tuple[str, str]:
    """``oci://host[:port]/repo/prefix`` -> ``("host[:port]", "repo/prefix")``;
    ``ValueError`` saying what is wrong otherwise."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "oci":
        raise ValueError(f"cache url {url!r}: expected oci://host[:port]/repository")
    if "@" in parts.netloc:
        raise ValueError("cache url: credentials do not go in the url (put them in "
                         "~/.docker/config.json or $REGISTRY_AUTH_FILE)")
    host, prefix = parts.netloc, parts.path.strip("/")
    if parts.query or parts.fragment or not _OCI_HOST.match(host):
        raise ValueError(f"cache url {url!r}: expected oci://host[:port]/repository")
    if prefix and not OCI_REPOSITORY.match(prefix):
        raise ValueError(f"cache url {url!r}: {prefix!r} is not a repository name "
                         "(lower-case letters, digits, '.', '_', '-', separated by '/')")
    return host, prefix


@dataclass(frozen=True)
class Cache:
    """``settings.cache``: where the shared build cache is (``oci://host/prefix``),
    the key that signs what is pushed and the allowed signers of what is pulled."""
    url: str
    push: bool = False
    plain_http: bool = False
    sign_key: Path | None = None  # a private key, or a public key whose half is in ssh-agent
    trust: Path | None = None  # allowed signers (git's format); None: pulls are not verified


@dataclass(frozen=True)
class Settings:
    workdir: Path
    destdir: str
    prefix: str
    sudo: str
    jobs: int
    cache: Cache | None = None  # None: no build cache, no network access


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
class SmokeCommand:
    run: str  # a shell command, run with the installed stack first on PATH
    expect: tuple[str, ...] = ()  # each must appear in its output


@dataclass(frozen=True)
class Smoke:
    """``smoke``: the stack's own end-to-end check (tasks/steps/smoke.py)."""
    image_boot: bool = False
    run_pod: tuple[str, ...] | None = None  # what the pod's `ip addr` must show; None: no pod
    commands: tuple[SmokeCommand, ...] = ()
    timeout: int = 600  # seconds, for each check


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
    smoke: Smoke | None = None
    lock: Path | None = None  # another stack.lock than the one beside the file (bisect)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        """``stack.lock`` beside ``stack.yaml``; never the stack file itself.
        A bisect's workspace (tasks/steps/bisect.py) has a lock of its own."""
        if self.lock is not None:
            return self.lock
        path = self.path.with_suffix(".lock")
        return path if path != self.path else self.path.with_name(self.path.name + ".lock")

    def target(self, path: str) -> Path:
        """Where a target-system path lands (under destdir when staged)."""
        if self.settings.destdir:
            return Path(self.settings.destdir + path)
        return Path(path)
