"""Paths under a target root, reached as a chroot at that root reaches them.

``Target`` is what journal.py writes, removes, backs up and puts back
through: every path it is given (as on this machine, ``<root>/usr/...``) is
first resolved inside the root (``resolve``): each symbolic link met on the
way is followed, an absolute target starting again at the root, and ``..``
never going above it; a link whose ``..`` would climb above the root, or
links that loop, raise ``Blocked``.  The live root ``/`` has nothing above
it: there ``..`` stays at ``/``, as the kernel does.  Each operation then
opens the folders on the resolved path one at a time without following
links (``O_NOFOLLOW``), and acts in the last one, so a folder swapped for a
link after the path was resolved stops it (``Changed``) instead of being
written through.

Standard library only: it runs as root through sudo, with journal.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from .errors import StackError

_CHUNK = 1 << 20


def sha256_of(f) -> str:
    """The sha256 of what is left to read in the binary file ``f``."""
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


_MAXLINKS = 40  # as Linux: more links than this on one path is a loop
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A folder opened only to reach what is in it (O_PATH: no read permission needed).
_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC


class Blocked(Exception):
    """A path that cannot be reached inside the root, and the link to blame:
    its ``..`` climbs above the root, or (with ``loop``) links loop."""

    def __init__(self, link: str, target: str, loop: list[tuple[str, str]] | None = None):
        super().__init__(f"{link} -> {target}")
        self.link, self.target, self.loop = link, target, loop

    def say(self, path: str, verb: str, root: str) -> str:
        if self.loop:
            chain = ", ".join(f"{link} -> {target}" for link, target in self.loop)
            return f"{self.link} -> {self.target}: {path} cannot be reached: the links loop " \
                   f"({chain})"
        return f"{self.link} -> {self.target}: {path} would be {verb} outside {root}"


class Changed(StackError):
    """A folder on the way turned into a link after the path was checked."""


class Target:
    """The target root, every path under it reached as a chroot at the root
    would reach it.  Paths are given as on this machine (``<root>/usr/...``,
    as journals hold them); each operation follows the links on the way
    inside the root (``resolve``), then opens the folders one by one
    without following links, and acts in the last one."""

    def __init__(self, root: str):
        self.base = root.rstrip("/")  # "" for /
        self.root = self.base or "/"

    def at(self, parts: list[str]) -> str:
        return self.base + "/" + "/".join(parts) if parts else self.root

    def resolve(self, path: str, last: bool = False, absent=frozenset()) -> list[str]:
        """The components, under the root, of where ``path`` really is: each
        link on the way followed (the last component's too, with ``last``).
        A path in ``absent`` (one the journal removes first) counts as not
        there.  Raises ``Blocked``."""
        if path != self.base and not path.startswith(self.base + "/"):
            raise ValueError(f"{path} is not under {self.root}")
        todo = [(name, -1) for name in reversed(path[len(self.base):].split("/"))
                if name not in ("", ".")]
        done: list[str] = []
        links: list[tuple[str, str]] = []
        while todo:
            name, came_from = todo.pop()
            if name == "..":
                if done:
                    done.pop()
                elif self.base:  # above a root that is not /: outside it
                    raise Blocked(*links[came_from]) if came_from >= 0 else \
                        ValueError(f"{path} climbs above {self.root}")
                continue
            here = done + [name]
            if not todo and not last:
                return here
            where = self.at(here)
            st = None if where in absent else lstat(where)
            if st is None or not stat.S_ISLNK(st.st_mode):
                done = here  # a folder, or not there (what is under it is not there either)
                continue
            target = os.readlink(where)
            links.append((where, target))
            if len(links) > _MAXLINKS:
                raise Blocked(*links[0], loop=list(dict.fromkeys(links[-_MAXLINKS // 2:])))
            if target.startswith("/"):
                done = []  # an absolute target starts again at the root
            todo.extend((part, len(links) - 1) for part in reversed(target.split("/"))
                        if part not in ("", "."))
        return done

    def where(self, path: str, last: bool = False) -> str:
        return self.at(self.resolve(path, last))

    def _parent(self, parts: list[str], path: str) -> int:
        """The folder holding ``parts[-1]``, opened one component at a time,
        never through a link.  A component that is not a folder: the path
        is not there (FileNotFoundError); one that became a link: Changed."""
        fd = os.open(self.root, _DIR)
        try:
            for i, name in enumerate(parts[:-1]):
                try:
                    nxt = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise Changed(
                            f"{self.at(parts[:i + 1])} changed into a symbolic link while {path} "
                            "was being put in place or removed: stopped, nothing written "
                            "through it",
                            hint="something else is changing the target root: find it, then "
                                 "run again (the journal is kept and finished next time)") \
                            from None
                    raise FileNotFoundError(errno.ENOENT, "not a folder", self.at(parts[:i + 1])) \
                        from None
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _do(self, path: str, action, last: bool = False):
        """``action(name, folder_fd)`` in the folder that holds ``path``."""
        parts = self.resolve(path, last)
        fd = self._parent(parts, path) if parts else os.open(self.root, _DIR)
        try:
            return action(parts[-1] if parts else ".", fd)  # "." when a link led to the root
        finally:
            os.close(fd)

    def lstat(self, path: str, last: bool = False) -> os.stat_result | None:
        try:
            return self._do(path, lambda name, fd: os.stat(name, dir_fd=fd,
                                                            follow_symlinks=False), last)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is a folder, or a link to one inside the root."""
        st = self.lstat(path, last=True)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def readlink(self, path: str) -> str:
        return self._do(path, lambda name, fd: os.readlink(name, dir_fd=fd))

    def open_file(self, path: str) -> int:
        """A regular file of the target, opened for reading (never a link's
        other end, never a FIFO that would block)."""
        def opening(name, fd):
            out = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC,
                          dir_fd=fd)
            if not stat.S_ISREG(os.fstat(out).st_mode):
                os.close(out)
                raise StackError(f"{path} is not a regular file")
            return out
        return self._do(path, opening)

    def sha256(self, path: str) -> str:
        with os.fdopen(self.open_file(path), "rb") as f:
            return sha256_of(f)

    def unlink(self, path: str) -> None:
        self._do(path, lambda name, fd: os.unlink(name, dir_fd=fd))

    def rmdir(self, path: str) -> None:
        self._do(path, lambda name, fd: os.rmdir(name, dir_fd=fd))

    def mkdir(self, path: str, mode: int) -> None:
        def making(name, fd):
            os.mkdir(name, 0o700, dir_fd=fd)
            made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC,
                           dir_fd=fd)
            try:
                os.fchmod(made, mode)
            finally:
                os.close(made)
        self._do(path, making)

    def put(self, path: str, *, data: str | None = None, link: str | None = None,
            mode: int = 0o644, owner: tuple[int, int] | None = None,
            times: tuple[int, int] | None = None) -> None:
        """Put a file (a copy of ``data``, a path outside the root) or a
        symlink at ``path``: written beside it, synced, then renamed over
        it, so a reader sees the old file or the new one."""
        def putting(name, fd):
            tmp = f".{name}.kps-new"
            try:
                os.unlink(tmp, dir_fd=fd)
            except FileNotFoundError:
                pass
            if link is not None:
                os.symlink(link, tmp, dir_fd=fd)
                if owner:
                    os.chown(tmp, *owner, dir_fd=fd, follow_symlinks=False)
            else:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | _CLOEXEC, 0o600, dir_fd=fd)
                with os.fdopen(out, "wb") as w, open(data, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        w.write(chunk)
                    w.flush()
                    if owner:
                        os.fchown(out, *owner)
                    os.fchmod(out, mode)  # after chown, which clears set-id bits
                    if times:
                        os.utime(out, ns=times)
                    os.fsync(out)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        self._do(path, putting)

    def copy_in(self, src: str, path: str) -> None:
        """Put back ``src`` (a backup) at ``path``: its mode, times and, as
        root, its owner kept."""
        st = os.lstat(src)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        if stat.S_ISLNK(st.st_mode):
            self.put(path, link=os.readlink(src), owner=owner)
        else:
            self.put(path, data=src, mode=stat.S_IMODE(st.st_mode), owner=owner,
                     times=(st.st_atime_ns, st.st_mtime_ns))

    def copy_out(self, path: str, dest: str, owner: tuple[int, int] | None) -> None:
        """Copy ``path`` (a file or symlink of the target) to ``dest``, a
        backup outside the root: its mode, times and, as root, its owner
        kept; the copy appears whole (written beside ``dest``, then renamed).
        The folders made for it are ``owner``'s (the user's workdir)."""
        _mkdirs(os.path.dirname(dest), owner)
        tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.kps-new")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        st = self.lstat(path)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "not there", path)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(self.readlink(path), tmp)
        else:
            with os.fdopen(self.open_file(path), "rb") as f, open(tmp, "xb") as w:
                while chunk := f.read(_CHUNK):
                    w.write(chunk)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        if os.geteuid() == 0:
            os.lchown(tmp, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(tmp, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
        os.rename(tmp, dest)


def _mkdirs(folder: str, owner: tuple[int, int] | None) -> None:
    """Create ``folder`` and its missing parents, owned by ``owner`` (the
    user, when this runs as root: backups live in the user's workdir)."""
    if os.path.isdir(folder):
        return
    _mkdirs(os.path.dirname(folder), owner)
    os.mkdir(folder)
    if owner and os.geteuid() == 0:
        os.chown(folder, *owner)
