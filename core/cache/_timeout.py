"""A cheap per-call time bound: `async with deadline(seconds):` raises `TimeoutError`.

anyio's cancel scopes cost about 15 µs per use on asyncio, a fifth of a local Redis round trip,
which would dominate the cache hit path; `asyncio.timeout` costs about 2 µs. Python 3.10 has no
`asyncio.timeout`, so there it falls back to `anyio.fail_after`.
"""

from __future__ import annotations

import sys

__all__ = ["deadline"]

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # pragma: no cover - exercised by the 3.10 CI session
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from anyio import fail_after

    @asynccontextmanager
    async def deadline(seconds: float) -> AsyncIterator[None]:
        """Raise `TimeoutError` if the block takes longer than `seconds`."""
        with fail_after(seconds):
            yield
