"""The in-process tier: cache payloads kept in memory, bounded, served only while coherent.

Entries are the encoded payloads of Redis entries, by Redis key, in least-recently-used order,
bounded by count and by bytes. The tier never decides on its own what is current: it serves
only while its invalidation subscription (`core.cache.tracking`) is live, forgets every key that
subscription names, and forgets everything when the subscription is lost or re-established.

A value read from Redis is kept only if no invalidation of its key arrived while it was being
read: `begin` hands out a marker before the read is sent, an invalidation or flush withdraws it,
and `put` stores only under a marker still in place. The order in which the reply and the
invalidation message arrive, on two connections, then no longer matters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["LocalTier"]

ENTRY_OVERHEAD = 160
"""Bytes counted per entry on top of its key and payload: the dict slot, tuple and objects."""


class _Marker:
    __slots__ = ()


class LocalTier:
    """Payloads by Redis key, at most `max_entries` of them and `max_bytes` in all.

    An entry is served for at most `ttl` seconds and never past its Redis expiry. Nothing is
    served, and nothing stored, unless `live` (set by the invalidation subscription).
    """

    __slots__ = ("_bytes", "_entries", "_reads", "live", "max_bytes", "max_entries", "ttl")

    def __init__(self, *, max_entries: int, max_bytes: int, ttl: float) -> None:
        if max_entries < 1 or max_bytes < 1 or not ttl > 0:
            raise ValueError("local tier caps and ttl must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.live = False
        self._entries: OrderedDict[str, tuple[float, bytes, int]] = OrderedDict()
        self._reads: dict[str, _Marker] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held, as counted against `max_bytes`."""
        return self._bytes

    @property
    def pending_reads(self) -> int:
        """Reads that may still store a value (bounded by the reads in flight)."""
        return len(self._reads)

    def get(self, key: str) -> bytes | None:
        """The payload under `key`, if held, unexpired and the tier is live."""
        if not self.live:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def begin(self, key: str) -> _Marker | None:
        """A marker for a read of `key` about to be sent (None while not live)."""
        if not self.live:
            return None
        marker = self._reads[key] = _Marker()
        return marker

    def abandon(self, key: str, marker: _Marker | None) -> None:
        """The read of `marker` ended without a value to keep."""
        if marker is not None and self._reads.get(key) is marker:
            del self._reads[key]

    def put(self, key: str, marker: _Marker | None, payload: bytes, expires_in: float) -> bool:
        """Keep `payload` read under `marker` if no invalidation of `key` came since `begin`.

        `expires_in`: seconds until the Redis entry expires. Returns whether it was kept.
        """
        if marker is None or self._reads.get(key) is not marker:
            return False
        del self._reads[key]
        size = len(payload) + len(key) + ENTRY_OVERHEAD
        if not self.live or expires_in <= 0 or size > self.max_bytes:
            return False
        self._drop(key)
        self._entries[key] = (time.monotonic() + min(self.ttl, expires_in), payload, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
        return True

    def invalidate(self, keys: Iterable[str]) -> None:
        """Forget `keys` and withdraw the markers of their reads in flight."""
        for key in keys:
            self._drop(key)
            self._reads.pop(key, None)

    def flush(self) -> None:
        """Forget every entry and withdraw every marker."""
        self._entries.clear()
        self._reads.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]
