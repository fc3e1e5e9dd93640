"""Exceptions shared by the core's resource managers."""

from __future__ import annotations

__all__ = ["ResourceClosedError"]


class ResourceClosedError(RuntimeError):
    """A manager was used after `close()` (e.g. a request arriving during shutdown).

    Raised instead of silently building a new pool that nothing would ever close; `start()`
    makes the manager usable again. Adapters answer it with 503.
    """

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        super().__init__(f"the {dependency} manager is closed; call `await start()` to reopen it")
