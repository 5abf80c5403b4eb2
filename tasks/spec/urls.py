"""Which git URLs and paths a stack file may name."""

from __future__ import annotations

import posixpath
import re

_ALLOWED_SCHEMES = ("https", "ssh", "git", "file", "git+ssh", "ssh+git")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")
_SCP_RE = re.compile(r"^(?:[^@/:]+@)?[^@/:]+:")


def check_git_url(url: str) -> str | None:
    """Why ``url`` is refused, or None.  The URL itself is passed to git
    untouched, so ``url.<base>.insteadOf`` rewrites keep working."""
    if not url.strip() or url != url.strip():
        return "empty or padded with spaces"
    if url.startswith("-"):
        return "must not start with '-'"
    if _HELPER_RE.match(url):
        return (
            f"transport '{_HELPER_RE.match(url).group(1)}::' is not allowed "
            "(use https://, ssh://, git://, file:// or a local path)"
        )
    m = _SCHEME_RE.match(url)
    if m:
        if m.group(1).lower() not in _ALLOWED_SCHEMES:
            return (
                f"transport '{m.group(1)}://' is not allowed "
                "(use https://, ssh://, git://, file:// or a local path)"
            )
        return None
    return None  # scp-like ssh (host:path) or a local path


def is_local_path(url: str) -> bool:
    if _SCHEME_RE.match(url):
        return False
    if url.startswith(("/", "./", "../", "~")) or url in (".", ".."):
        return True
    return not _SCP_RE.match(url)


def norm_target(path: str) -> str | None:
    """Absolute, normalised target path, or None if it escapes or is relative."""
    if not path.startswith("/"):
        return None
    parts = path.split("/")
    if ".." in parts:
        return None
    return posixpath.normpath(path).replace("//", "/")


def inside(path: str) -> bool:
    """A relative path that stays inside its base folder."""
    if not path or path.startswith("/"):
        return False
    return ".." not in path.split("/")
