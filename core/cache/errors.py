"""Errors raised by the cache layer."""

from __future__ import annotations

__all__ = ["CacheError", "CacheUnavailable", "UnencodableValue"]


class CacheError(Exception):
    """Base class of cache errors."""


class CacheUnavailable(CacheError):
    """Redis could not be reached (down, slow past the timeout, or skipped by an open breaker).

    Raised only where ignoring the failure would serve stale data: `delete` and
    `invalidate_group`. Reads and fills fail open instead.
    """


class UnencodableValue(CacheError, TypeError):
    """The codec cannot serialise a value; a programming error, so it is never swallowed."""
