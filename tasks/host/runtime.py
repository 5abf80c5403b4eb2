"""Run-time paths: where the programs a pod needs at run time are.

One rule, used by ``check``, by the config variables ``${detect.virtiofsd}``
and ``${qemu.path}``, and by anything that writes such a path into a
configuration file.  A run-time path is a path on the target system, the
way a configuration file names it (``/usr/libexec/virtiofsd``).  It is
present when

1. a part of the stack installs it (its ``installs`` list names it), or
2. it exists in the staged root (``<destdir>/usr/libexec/virtiofsd``) when
   ``destdir`` is set: the stack put it there, or
3. it exists on this host: a distribution's package.  A staged tree is
   meant to be laid onto this host (or one like it), so the host's own
   files count for it too.

The value written is always the target path, never the staged one.
``KPS_CHECK_ROOT`` (for the tests, which cannot fake /dev/kvm) makes every
host lookup look under that folder instead of ``/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..catalog import DISTRO_VIRTIOFSD

ROOT_ENV = "KPS_CHECK_ROOT"

# The virtiofsd QEMU builds, then where distributions put theirs (the
# catalog's virtiofsd entry: DISTRO_VIRTIOFSD).
VIRTIOFSD = ("{prefix}/libexec/virtiofsd",)
# The QEMU the stack builds, then the distributions' (Debian's, Fedora's).
QEMU = ("{prefix}/bin/qemu-system-x86_64",)
DISTRO_QEMU = ("/usr/bin/qemu-system-x86_64", "/usr/libexec/qemu-kvm")


def host_root() -> str:
    return os.environ.get(ROOT_ENV, "").rstrip("/")


def host_path(path: str) -> Path:
    """Where a host path is looked at (under ``KPS_CHECK_ROOT`` in the tests)."""
    return Path(host_root() + path)


@dataclass(frozen=True)
class Found:
    path: str  # on the target system
    where: str  # "installed by PART", "staged in DESTDIR", "on this host"
    part: str | None = None  # the part that installs it

    def __str__(self) -> str:
        if self.part:
            return f"{self.part} installs {self.path}"
        if self.where.startswith("staged"):
            return f"{self.path} ({self.where})"
        return self.path


def _runnable(path: Path, executable: bool) -> bool:
    return path.is_file() and (not executable or os.access(path, os.X_OK))


def find(stack, path: str, executable: bool = True) -> Found | None:
    """Whether ``path`` is present on the target system, by the rule above."""
    for c in stack.components.values():
        for part in c.parts:
            if path in part.installs:
                return Found(path, f"installed by {part.id}", part.id)
    if stack.settings.destdir and _runnable(stack.target(path), executable):
        return Found(path, f"staged in {stack.settings.destdir}")
    if _runnable(host_path(path), executable):
        return Found(path, "on this host")
    return None


def candidates(stack, ours: tuple[str, ...], theirs: tuple[str, ...]) -> list[str]:
    prefix = stack.settings.prefix.rstrip("/")
    return [p.format(prefix=prefix) for p in ours] + list(theirs)


def first(stack, paths: list[str], executable: bool = True) -> Found | None:
    for path in paths:
        found = find(stack, path, executable)
        if found:
            return found
    return None


def virtiofsd(stack) -> Found | None:
    return first(stack, candidates(stack, VIRTIOFSD, DISTRO_VIRTIOFSD))


def qemu(stack) -> tuple[str, Found | None]:
    """The QEMU to run: the stack's, else the distribution's; with where it
    was found (None: nowhere, and the stack's path is returned)."""
    paths = candidates(stack, QEMU, DISTRO_QEMU)
    found = first(stack, paths)
    return (found.path if found else paths[0]), found


def looked_at(stack, paths: list[str]) -> str:
    """Where ``find`` looked, for a message."""
    places = []
    for path in paths:
        if stack.settings.destdir:
            places.append(str(stack.target(path)))
        places.append(str(host_path(path)))
    return ", ".join(dict.fromkeys(places))
