"""PostgreSQL read replicas: one read-only engine per replica, chosen round-robin.

A replica that cannot be reached sits out a cool-off and is then tried again; when none is up,
reads go to the primary. Replication itself is PostgreSQL's (streaming replicas); this module
only decides where a read-only session connects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["Replica", "ReplicaSet", "is_connection_failure"]

log = logging.getLogger("dualcore.database.replicas")


def is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` means the server could not be reached or dropped the connection (as
    opposed to an error in the statement)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    cause = exc.__cause__
    return isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError)) or (
        cause is not None and isinstance(cause, (OSError, asyncio.TimeoutError))
    )


class Replica:
    """One replica: its engine, a printable URL, and until when it is skipped."""

    __slots__ = ("down_until", "engine", "failures", "name", "safe_url")

    def __init__(self, name: str, engine: AsyncEngine, safe_url: str) -> None:
        self.name = name
        self.engine = engine
        self.safe_url = safe_url
        self.down_until = 0.0
        self.failures = 0

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, {self.safe_url!r})"


class ReplicaSet:
    """The replicas of one database and the round-robin choice among those that are up.

    Give it engines whose pools refuse connections the server closed while idle
    (`core.database.connection.harden_engine`, as `DatabaseManager` does): then a replica that
    went away fails at connect, where the next one is tried, not in the middle of a session.
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        cooloff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cooloff <= 0:
            raise ValueError("cooloff must be positive")
        self._replicas = list(replicas)
        self._cooloff = cooloff
        self._clock = clock
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._replicas)

    def __iter__(self) -> Iterator[Replica]:
        return iter(self._replicas)

    def is_up(self, replica: Replica) -> bool:
        """False while `replica` sits out its cool-off."""
        return replica.down_until <= self._clock()

    def candidates(self) -> list[Replica]:
        """The replicas that are up, starting with the next one in round-robin order.

        The turn passes to the replica after the first candidate, so the replicas that are up
        share reads evenly while another sits out.
        """
        count = len(self._replicas)
        ordered = [self._replicas[(self._cursor + i) % count] for i in range(count)]
        up = [r for r in ordered if self.is_up(r)]
        if up:
            self._cursor = (self._replicas.index(up[0]) + 1) % count
        return up

    def mark_down(self, replica: Replica) -> None:
        """Skip `replica` for the cool-off period."""
        replica.failures += 1
        replica.down_until = self._clock() + self._cooloff
        log.warning(
            "replica %s (%s) is unreachable; skipping it for %.1fs",
            replica.name,
            replica.safe_url,
            self._cooloff,
        )

    def mark_up(self, replica: Replica) -> None:
        """Use `replica` again right away."""
        if replica.down_until:
            log.info("replica %s (%s) is reachable again", replica.name, replica.safe_url)
        replica.down_until = 0.0

    async def connect(self) -> tuple[AsyncConnection, Replica] | None:
        """A connection to the next replica that answers, or None when none does.

        Replicas that fail to connect are marked down and the next one is tried.
        """
        for replica in self.candidates():
            try:
                conn = await replica.engine.connect()
            except Exception as exc:
                log.debug("connecting to %s failed: %s", replica.name, type(exc).__name__)
                self.mark_down(replica)
                continue
            return conn, replica
        return None

    async def ping(self, replica: Replica) -> float:
        """Run `SELECT 1` on `replica` (cool-off or not) and update its state; return the
        round-trip time in seconds."""
        start = time.perf_counter()
        try:
            async with replica.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception:
            # Whatever the reason (refused, starting up, bad credentials) it cannot serve reads.
            self.mark_down(replica)
            raise
        self.mark_up(replica)
        return time.perf_counter() - start

    async def dispose(self) -> None:
        """Dispose every replica's pool; raises the first failure after trying all."""
        errors: list[BaseException] = []
        for replica in self._replicas:
            try:
                await replica.engine.dispose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
