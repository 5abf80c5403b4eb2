"""The guest image on disk: read it (decompressing through the runner when
the standard library cannot), check it, and write a copy for a boot test."""

from __future__ import annotations

import posixpath
from pathlib import Path

from ... import run
from ...errors import StackError
from . import imagecheck, initramfs
from .initramfs import Entry, Image

# The programs that decompress what Python's standard library does not.
TOOLS = {"lz4": "lz4", "lzo": "lzop"}


def _filter(argv: list[str], data: bytes) -> bytes:
    try:
        result = run.query(argv, input=data, check=False,
                           missing_hint=f"install {argv[0]} to read the image")
    except run.ProgramMissing as err:
        raise StackError(err.message, err.hint) from None
    if not result.ok:
        raise StackError(f"{' '.join(argv)} could not decompress the image: "
                         f"{result.err.strip()[:300]}")
    return result.stdout


def load(path: Path) -> Image:
    """The image at ``path``, read as the kernel will read it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StackError(f"cannot read the image {path}: {err.strerror}") from None
    return Image.from_bytes(data, filter=_filter)


def problems(image: Image, agent: str | None, staged_root: str = "") -> list[str]:
    """Why the image cannot boot, or is not what a live install gives (a
    file kept at its staged path, under ``staged_root``)."""
    found = imagecheck.problems(image, agent)
    if staged_root:
        under = sorted(p for p in image.entries if p == staged_root or
                       p.startswith(staged_root.rstrip("/") + "/"))
        files = [p for p in under if not image.entries[p].is_dir]
        for path in files[:5]:
            found.append(f"{path} is kept at its staged path (under destdir "
                         f"{staged_root}): the image must not depend on where the stack "
                         "was staged")
        if len(files) > 5:
            found.append(f"... and {len(files) - 5} more files under {staged_root}")
    return found


def programs(image: Image) -> list[str]:
    """The names of the programs in the image (regular executable files in
    its bin and sbin folders, and /init's target): what the builder took
    from PATH."""
    names = set()
    for path, entry in image.entries.items():
        folder = posixpath.basename(posixpath.dirname(path))
        if entry.is_file and entry.is_executable and folder in ("bin", "sbin"):
            names.add(posixpath.basename(path))
    return sorted(names)


def boot_copy(image: Image, agent: str, stand_in: bytes) -> bytes:
    """The image as an uncompressed newc archive, with ``agent`` replaced by
    ``stand_in`` (a program that says it ran and powers the guest off)."""
    entries = dict(image.entries)
    entries[agent] = Entry.file(agent, stand_in, mode=0o755)
    return initramfs.write(entries.values())
