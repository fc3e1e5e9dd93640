"""A Redis connection pool that waits, bounded, for a free connection only when it has none."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from core.redis_client.connection import lean_connection_class

__all__ = ["WaitingConnectionPool"]


class WaitingConnectionPool(ConnectionPool):
    """`ConnectionPool` that, with all `max_connections` in use, waits up to `timeout` seconds
    for one to come back (then raises `ConnectionError("No connection available.")`).

    It behaves as redis-py's `BlockingConnectionPool`, but that one takes a condition lock and
    arms a timer on every checkout, about a tenth of a whole cache hit; here a checkout that
    finds a connection costs what a plain `ConnectionPool` checkout does, and only one that
    finds none waits. `timeout=None` waits without bound. Its connections bound their socket
    operations without a timer per command (`core.redis_client.connection`).
    """

    def __init__(self, *, timeout: float | None = 20.0, **kwargs: Any) -> None:
        connection_class = kwargs.pop("connection_class", Connection)
        super().__init__(connection_class=lean_connection_class(connection_class), **kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        """A connected connection; waits for one to be released while all are in use."""
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-any-return,no-untyped-call]
        except MaxConnectionsError:
            pass
        loop = asyncio.get_running_loop()
        give_up_at = None if self.timeout is None else loop.time() + self.timeout
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = None if give_up_at is None else loop.call_at(give_up_at, _time_out, waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # woken, but leaving: the connection is someone else's
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-any-return,no-untyped-call]
            except MaxConnectionsError:
                continue  # taken by a caller that did not have to wait: wait again

    async def release(self, connection: AbstractConnection) -> None:
        """Return `connection` to the pool and wake the longest waiter."""
        try:
            await super().release(connection)
        finally:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(RedisConnectionError("No connection available."))
