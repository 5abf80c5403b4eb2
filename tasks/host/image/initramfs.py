"""initramfs: read and write the guest image the way the kernel unpacks it.

An image is a sequence of archives, each either an uncompressed newc cpio
archive or a compressed stream holding cpio archives, with zero padding
between them (the kernel's ``unpack_to_rootfs``).  Entries of later archives
replace earlier ones, and an entry whose folder is a symbolic link lands in
the link's target, as it does when the kernel writes it.  gzip, xz and lzma
are read here with the standard library; lz4 and lzo need their programs,
which the caller runs (``filter``): this module starts no process.

``write()`` makes a newc archive, so that tests (and a boot test) can make
images of their own.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import re
import stat
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ...errors import StackError

Filter = Callable[[list[str], bytes], bytes]

_NEWC = (b"070701", b"070702")
_LZ4_LEGACY = b"\x02\x21\x4c\x18"  # lz4 -l: the only lz4 format the kernel reads
_MAGICS = (  # (compression, magic); "none" is a newc cpio archive
    *(("none", m) for m in _NEWC),
    ("gzip", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("lzma", b"\x5d\x00\x00"),
    ("lz4", _LZ4_LEGACY),
    ("lz4", b"\x04\x22\x4d\x18"),  # the frame format
    ("lzo", b"\x89LZO"),
)
_TOOLS = {"lz4": ["lz4", "-dc"], "lzo": ["lzop", "-dc"]}
_HEADER_LEN = 110
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
_TRAILER = b"TRAILER!!!"
_NONZERO = re.compile(rb"[^\0]")
MAX_LINKS = 40  # symbolic links followed in one lookup, as Linux's MAXSYMLINKS


class BadImage(StackError):
    """The image cannot be read: the kernel could not unpack it either."""


@dataclass(frozen=True)
class Entry:
    """One file of the image; ``data`` is a symbolic link's target, ``rdev``
    a device node's number (os.makedev), kept so that a copy still boots."""

    path: str
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes = b""
    rdev: int = 0

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | mode, data=data)

    @classmethod
    def directory(cls, path: str, mode: int = 0o755) -> Entry:
        return cls(path, stat.S_IFDIR | mode)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, data=os.fsencode(target))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_executable(self) -> bool:
        return self.is_file and bool(self.mode & 0o111)


class Image:
    """The files of an image by absolute path, with lookups that follow
    symbolic links inside the image, never on the host."""

    def __init__(self, entries: dict[str, Entry]):
        self.entries = entries

    @classmethod
    def from_bytes(cls, data: bytes, filter: Filter | None = None) -> Image:
        return cls(read(data, filter))

    def resolve(self, path: str, follow_last: bool = True) -> str | None:
        """The path ``path`` leads to inside the image, or None if nothing is there."""
        return _resolve(self.entries, path, follow_last)

    def entry(self, path: str) -> Entry | None:
        """What ``path`` leads to, links followed, or None."""
        found = self.resolve(path)
        return None if found is None else self.entries.get(found)


def detect(data: bytes, offset: int = 0) -> str:
    """The compression of the archive at ``offset``, by its magic: ``none``
    (newc cpio), ``gzip``, ``xz``, ``lzma``, ``lz4`` or ``lzo``."""
    for name, magic in _MAGICS:
        if data.startswith(magic, offset):
            return name
    head = data[offset:offset + 6]
    where = f" at offset {offset}" if offset else ""
    if head == b"070707":
        raise BadImage(f"the image{where} is an old (odc) cpio archive: the kernel reads newc only",
                       hint="make it with cpio -H newc")
    raise BadImage(f"the image{where} starts with {head.hex(' ') or 'nothing'}: neither a newc "
                   "cpio archive nor gzip, xz, lzma, lz4 or lzo data")


def decompress(data: bytes, filter: Filter | None = None) -> bytes:
    """The uncompressed bytes of ``data``: every compressed stream in turn
    (concatenated gzip members, say), zero padding between them skipped; data
    that is not compressed comes back as it is."""
    parts, pos = [], _skip_zeros(data, 0)
    while pos < len(data):
        part, pos = _decompress_at(data, pos, filter)
        parts.append(part)
        pos = _skip_zeros(data, pos)
    return b"".join(parts)


def read(data: bytes, filter: Filter | None = None) -> dict[str, Entry]:
    """The files the kernel would unpack from ``data``, by absolute path."""
    tree: dict[str, Entry] = {}
    _read_stream(data, tree, filter, top=True)
    return tree


def write(entries: Iterable[Entry]) -> bytes:
    """A newc archive of ``entries``: folders before their contents, and the
    folders an entry needs but that are not given added (0755), because the
    kernel cannot create a file in a folder that does not exist."""
    tree = {_normalise(e.path): e for e in entries}
    for path in list(tree):
        for parent in _parents(path):
            tree.setdefault(parent, Entry.directory(parent))
    order = sorted(tree, key=lambda p: [part for part in p.split("/") if part])
    out = bytearray()
    for ino, path in enumerate(order, start=1):
        entry = tree[path]
        name = os.fsencode(path.lstrip("/")) or b"."
        _append_member(out, name, entry, ino, 2 if entry.is_dir else 1)
    _append_member(out, _TRAILER, Entry("", 0), 0, 1)
    return bytes(out)


def _append_member(out: bytearray, name: bytes, entry: Entry, ino: int, nlink: int) -> None:
    values = (ino, entry.mode, entry.uid, entry.gid, nlink, entry.mtime, len(entry.data),
              0, 0, os.major(entry.rdev), os.minor(entry.rdev), len(name) + 1, 0)
    out += _NEWC[0] + b"".join(b"%08X" % v for v in values) + name + b"\0"
    out += b"\0" * (-len(out) % 4) + entry.data
    out += b"\0" * (-len(out) % 4)


def _read_stream(buf: bytes, tree: dict[str, Entry], filter: Filter | None, top: bool) -> None:
    """Unpack archives one after the other, as the kernel does.  Only the
    image itself may hold compressed streams: the kernel refuses compressed
    data inside a compressed stream, and a cpio archive it reads starts at an
    offset that is a multiple of 4."""
    pos = _skip_zeros(buf, 0)
    while pos < len(buf):
        kind = detect(buf, pos)
        if kind == "none":
            if top and pos % 4:
                raise BadImage(f"the cpio archive at offset {pos} of the image does not start on "
                               "a multiple of 4 bytes: the kernel would not read it")
            pos = _read_archive(buf, pos, tree)
        elif top:
            _refuse_lz4_frames(buf, pos, kind)
            inner, pos = _decompress_at(buf, pos, filter)
            _read_stream(inner, tree, filter, top=False)
        else:
            raise BadImage(f"{kind} data inside a compressed archive (at offset {pos} of its "
                           "contents): the kernel cannot unpack that")
        pos = _skip_zeros(buf, pos)


def _refuse_lz4_frames(buf: bytes, pos: int, kind: str) -> None:
    """The kernel knows lz4 by the legacy magic only: a frame-format image
    stops its unpacking with "invalid magic"."""
    if kind == "lz4" and not buf.startswith(_LZ4_LEGACY, pos):
        raise BadImage(f"the lz4 data at offset {pos} is in the frame format, which the kernel "
                       "cannot unpack", hint="compress the image with lz4 -l (legacy format)")


def _read_archive(buf: bytes, pos: int, tree: dict[str, Entry]) -> int:
    """Add the members of the cpio archive at ``pos`` to ``tree``; return
    where the archive ends.  Hard links carry their data in the last link
    only: once the archive is read, every link gets it."""
    links: dict[tuple[int, int, int], list[Entry]] = {}
    while pos < len(buf):
        fields = _header(buf, pos)
        name_end = pos + _HEADER_LEN + fields["namesize"]
        data_start = _align(name_end)
        data_end = data_start + fields["filesize"]
        if data_end > len(buf) or fields["namesize"] == 0:
            raise BadImage(f"the cpio member at offset {pos} is cut short (a truncated image?)")
        name = buf[pos + _HEADER_LEN:name_end - 1]
        pos = _align(data_end)
        if name == _TRAILER:
            break
        entry = _entry(tree, name, fields, buf[data_start:data_end])
        tree[entry.path] = entry
        if entry.is_file and fields["nlink"] > 1:
            key = (fields["ino"], fields["devmajor"], fields["devminor"])
            links.setdefault(key, []).append(entry)
    _share_link_data(tree, links)
    return pos


def _header(buf: bytes, pos: int) -> dict[str, int]:
    raw = buf[pos:pos + _HEADER_LEN]
    if len(raw) < _HEADER_LEN or raw[:6] not in _NEWC:
        raise BadImage(f"the cpio member at offset {pos} is cut short or has no newc magic")
    try:
        return {f: int(raw[6 + 8 * i:14 + 8 * i], 16) for i, f in enumerate(_FIELDS)}
    except ValueError:
        raise BadImage(f"the cpio header at offset {pos} holds a field that is not "
                       "hexadecimal") from None


def _entry(tree: dict[str, Entry], name: bytes, fields: dict[str, int], data: bytes) -> Entry:
    """The member as an Entry, placed where the kernel would write it."""
    mode = fields["mode"]
    path = _place(tree, _normalise(os.fsdecode(name)), mode)
    rdev = os.makedev(fields["rdevmajor"], fields["rdevminor"])
    return Entry(path, mode, fields["uid"], fields["gid"], fields["mtime"], data, rdev)


def _place(tree: dict[str, Entry], path: str, mode: int) -> str:
    """Where the kernel puts a member at ``path`` in the image as it stands:
    links in its folder are followed, and a link already at ``path`` that
    leads to something of the member's type is kept, the member going
    through it (the kernel keeps the link, then writes the file or sets the
    folder's mode through it).  So /lib -> usr/lib stays a link when a later
    archive has /lib as a folder, and that archive's /lib/x lands in
    /usr/lib/x."""
    if path == "/":
        return path
    folder, base = posixpath.split(path)
    path = posixpath.join(_resolve(tree, folder, follow_last=True) or folder, base)
    existing = tree.get(path)
    if existing is None or not existing.is_symlink:
        return path
    target = _resolve(tree, path, follow_last=True)
    if target is None:
        return path
    found = tree.get(target)
    target_kind = stat.S_IFMT(found.mode) if found else stat.S_IFDIR  # only "/" can be absent
    return target if target_kind == stat.S_IFMT(mode) else path


def _share_link_data(tree: dict[str, Entry],
                     links: dict[tuple[int, int, int], list[Entry]]) -> None:
    for group in links.values():
        data = next((e.data for e in reversed(group) if e.data), b"")
        for entry in group:
            tree[entry.path] = replace(entry, data=data)


def _decompress_at(buf: bytes, pos: int, filter: Filter | None) -> tuple[bytes, int]:
    """The contents of the stream at ``pos`` and where it ends.  An lz4 or
    lzo stream goes to its program and is taken to run to the end of the
    image: the program cannot say where it stopped."""
    kind = detect(buf, pos)
    if kind == "none":
        return buf[pos:], len(buf)
    if kind == "gzip":
        return _unpack_with(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), zlib.error,
                            kind, buf, pos)
    if kind in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
        return _unpack_with(lzma.LZMADecompressor(format=fmt), lzma.LZMAError, kind, buf, pos)
    return _through_tool(kind, buf[pos:], filter), len(buf)


def _unpack_with(decoder, error: type[Exception], kind: str, buf: bytes,
                 pos: int) -> tuple[bytes, int]:
    try:
        out = decoder.decompress(memoryview(buf)[pos:])
    except error as err:
        raise BadImage(f"the {kind} data at offset {pos} is corrupt: {err}") from None
    if not decoder.eof:
        raise BadImage(f"the {kind} data at offset {pos} ends early (a truncated image?)")
    return out, len(buf) - len(decoder.unused_data)


def _through_tool(kind: str, data: bytes, filter: Filter | None) -> bytes:
    argv = _TOOLS[kind]
    if filter is None:
        raise BadImage(f"the image is {kind}-compressed: reading it needs the {argv[0]} "
                       f"program ({' '.join(argv)}), and none was given to run it")
    out = filter(list(argv), data)
    if not isinstance(out, bytes):
        raise TypeError(f"the {argv[0]} filter returned {type(out).__name__}, not bytes")
    return out


def _resolve(tree: dict[str, Entry], path: str, follow_last: bool) -> str | None:
    """Walk ``path`` one name at a time from the root of the image, as the
    kernel's lookup does: a link's absolute target starts again at the root of
    the image, a relative one at the link's folder; ``..`` goes up from where
    the walk really is.  None if a name is missing, a name that is not the last
    is no folder, or more than MAX_LINKS links are followed (a loop)."""
    pending = path.split("/")[::-1]
    current, links = "/", 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = posixpath.dirname(current)
            continue
        candidate = current + name if current == "/" else f"{current}/{name}"
        entry = tree.get(candidate)
        if entry is None:
            return None
        if entry.is_symlink and (pending or follow_last):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.fsdecode(entry.data)
            if not target:
                return None
            if target.startswith("/"):
                current = "/"
            pending.extend(target.split("/")[::-1])
            continue
        if pending and not entry.is_dir:
            return None
        current = candidate
    return current


def _normalise(name: str) -> str:
    return posixpath.normpath("/" + name.lstrip("/"))


def _parents(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


def _align(offset: int) -> int:
    return (offset + 3) & ~3


def _skip_zeros(buf: bytes, pos: int) -> int:
    found = _NONZERO.search(buf, pos)
    return found.start() if found else len(buf)
