"""What can go wrong with the build cache: one small hierarchy under
``StackError``, raised by the registry client (``oci``) and the layer
(``layer``), caught by ``buildcache`` (a cache problem never fails a run)."""

from __future__ import annotations

from ...errors import StackError


class CacheError(StackError):
    """The build cache answered something we cannot use."""


class CacheUnreachable(CacheError):
    """The registry cannot be reached (or answers 5xx): build locally."""


class CacheCorrupt(CacheError):
    """A manifest or blob does not match its digest or size: refused."""


class CacheAuthError(CacheError):
    """The registry refuses our credentials (or has none of ours)."""
