"""An install tree as one OCI layer: ``pack`` makes deterministic tar+gzip
bytes of it (sorted entries, modes kept, owner root, mtime 0, gzip mtime 0
and no name: the same tree, the same bytes); ``unpack`` checks every entry
of a layer before writing any (no absolute path, no ``..``, no link out of
the tree, no device) and raises ``CacheCorrupt`` on one that is not safe."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import CacheCorrupt, CacheError


def _entries(tree: Path) -> list[tuple[str, os.stat_result]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            path = Path(dirpath, name)
            out.append((path.relative_to(tree).as_posix(), os.lstat(path)))
    return sorted(out, key=lambda e: e[0])


def pack(tree: Path) -> bytes:
    """The tree as deterministic tar+gzip bytes (see the module docstring).
    Hard links are stored as separate files; a device, fifo or socket is
    refused."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, st in _entries(tree):
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid, info.uname, info.gname, info.mtime = 0, 0, "root", "root", 0
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(tree / rel)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(tree / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise CacheError(f"{tree / rel}: not a file, folder or symlink; not cached")
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _inside(parts: tuple[str, ...]) -> bool:
    depth = 0
    for p in parts:
        if p == "..":
            depth -= 1
            if depth < 0:
                return False
        elif p not in ("", "."):
            depth += 1
    return True


def _check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse the layer unless every entry is safe, looking at all of them
    (an entry below a symlink or file that comes later is refused, too)."""
    order: dict[str, int] = {}
    for i, m in enumerate(members):
        parts = PurePosixPath(m.name).parts
        norm = "/".join(parts)
        if not parts or m.name.startswith("/") or ".." in parts or "\0" in m.name \
                or norm == ".":
            raise CacheCorrupt(f"unsafe path in the layer: {m.name!r}")
        if norm in order:
            raise CacheCorrupt(f"the layer holds {m.name!r} twice")
        order[norm] = i
    for norm, i in order.items():
        m, parts = members[i], norm.split("/")
        for depth in range(1, len(parts)):
            parent = order.get("/".join(parts[:depth]))
            if parent is not None and not members[parent].isdir():
                raise CacheCorrupt(f"{m.name!r} is below a non-folder in the layer")
        if m.issym():
            target = PurePosixPath(m.linkname)
            base = () if target.is_absolute() else tuple(parts[:-1])
            if not m.linkname or not _inside(base + target.parts[target.is_absolute():]):
                raise CacheCorrupt(f"symlink {m.name!r} -> {m.linkname!r} leaves the tree")
        elif m.islnk():
            j = order.get("/".join(PurePosixPath(m.linkname).parts), len(members))
            if j >= i or not members[j].isreg() or m.linkname.startswith("/"):
                raise CacheCorrupt(f"hard link {m.name!r} -> {m.linkname!r} is not to a "
                                   "file earlier in the layer")
        elif not (m.isreg() or m.isdir()):
            raise CacheCorrupt(f"{m.name!r} is a device, fifo or other special file")


def unpack(data: bytes, dest: Path) -> None:
    """Extract tar+gzip ``data`` into ``dest`` (missing or empty).  Every
    entry is checked before anything is written: no absolute path, no
    ``..``, no symlink whose target leaves the tree (an absolute target is
    read from the tree's root, which is where the merge lays it), no hard
    link but to a file of the layer, no entry below a symlink, no device."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise CacheCorrupt(f"the layer is not a valid tar+gzip: {err}") from None
    with tar:
        _check_members(members)
        if dest.exists() and any(dest.iterdir()):
            raise CacheError(f"{dest} is not empty; nothing unpacked")
        try:
            _extract(tar, members, dest)
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise CacheCorrupt(f"the layer is not a valid tar+gzip: {err}") from None
        except OSError as err:
            raise CacheError(f"unpacking into {dest}: {err}") from None


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    dirs = []
    for m in members:
        path = dest / m.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if m.isdir():
            path.mkdir(exist_ok=True)
            dirs.append((path, m.mode))
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            os.link(dest / m.linkname, path, follow_symlinks=False)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out, tar.extractfile(m) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.chmod(path, m.mode & 0o7777)
    for path, mode in sorted(dirs, key=lambda d: -len(d[0].parts)):
        os.chmod(path, mode & 0o7777)

