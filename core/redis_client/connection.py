"""redis-py connections whose socket timeout costs nothing on a command that does not wait.

redis-py applies `socket_timeout` to every command twice: the write runs under
`asyncio.wait_for` (a task of its own and an extra turn of the event loop before Python 3.12)
and the read under a fresh `asyncio.timeout` (a loop timer armed and cancelled). On a loopback
round trip that is a third of the command's cost on Python 3.11 (`benchmarks/bench_cache.py`:
a plain client with and without its default timeout); less from 3.12, where `wait_for` needs no
task.

Here a write that the socket takes at once (the usual case: nothing left in the transport's
buffer) has nothing to wait for and no timer; one that has to wait for the socket is bounded as
before. Reads are bounded by one timer per connection that stays armed from command to command
(`SharedTimeout`), on Python 3.11 and newer. The errors are redis-py's own: `TimeoutError`
("Timeout writing to socket" / "Timeout reading from ..."), `ConnectionError`, and the
connection is dropped as redis-py drops it.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core._aio import SharedTimeout

__all__ = ["lean_connection_class"]


class _LeanTimeouts(AbstractConnection):
    """The socket timeout of `send_packed_command` and `read_response`, without per-command
    timers; everything else is the connection class it is mixed into."""

    _read_bound: SharedTimeout | None = None

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        """Send a packed command; bounded by `socket_timeout` only when the socket makes it wait."""
        if not self.socket_timeout or not self.is_connected:
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        writer = self._writer
        if writer is None or not self.is_connected or writer.transport.is_closing():
            # Reconnecting, or the server went away: redis-py's own path and errors.
            await super().send_packed_command(command, False)
            return
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        transport = writer.transport
        try:
            for chunk in command:
                # write(), not writelines(): on some Python versions (3.12.1 here) writelines
                # never pauses the protocol, so a drain would not wait for a full buffer.
                writer.write(chunk)
            if transport.get_write_buffer_size():
                # Not all taken by the socket at once: the drain may have to wait for it.
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
            else:
                await writer.drain()  # nothing to wait for; raises if the connection was lost
        except asyncio.TimeoutError as exc:
            await self.disconnect(nowait=True)
            if isinstance(exc, OSError) and exc.errno is not None:  # ETIMEDOUT from the OS
                raise RedisConnectionError(
                    f"Error {exc.errno} while writing to socket. {exc.strerror}."
                ) from exc
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            err_no, message = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
            raise RedisConnectionError(
                f"Error {err_no} while writing to socket. {message}."
            ) from exc
        except (TypeError, AttributeError) as exc:
            # Some Python versions raise these from a transport whose connection was lost.
            await self.disconnect(nowait=True)
            if transport.is_closing():
                raise RedisConnectionError("Connection closed by the server while writing") from exc
            raise
        except BaseException:
            # A write cut short leaves the stream in an unknown state: never reuse it.
            await self.disconnect(nowait=True)
            raise

    if sys.version_info >= (3, 11):  # on 3.10 redis-py's own read bound is as cheap as ours

        async def read_response(
            self,
            disable_decoding: bool = False,
            timeout: float | None = None,
            *,
            disconnect_on_error: bool = True,
            push_request: bool | None = False,
        ) -> Any:
            """Read a reply, bounded by `socket_timeout` on the connection's one shared timer.

            An explicit `timeout` (pub/sub reads) is redis-py's own path.
            """
            seconds = self.socket_timeout
            if timeout is not None or not seconds:
                return await super().read_response(
                    disable_decoding,
                    timeout,
                    disconnect_on_error=disconnect_on_error,
                    push_request=push_request,
                )
            bound = self._read_bound
            if bound is None or bound.seconds != seconds:
                bound = self._read_bound = SharedTimeout(seconds)
            try:
                with bound():
                    # math.inf: no bound of redis-py's own; ours cancels the read, and redis-py
                    # drops the connection on that cancellation (unless told not to).
                    return await super().read_response(
                        disable_decoding,
                        math.inf,
                        disconnect_on_error=disconnect_on_error,
                        push_request=push_request,
                    )
            except TimeoutError:  # ours: redis-py's read has no bound of its own here
                raise RedisTimeoutError(f"Timeout reading from {self._host_error()}") from None


class LeanConnection(_LeanTimeouts, Connection):
    """`redis.asyncio.Connection` with lean socket timeouts."""


class LeanSSLConnection(_LeanTimeouts, SSLConnection):
    """`redis.asyncio.SSLConnection` with lean socket timeouts."""


class LeanUnixDomainSocketConnection(_LeanTimeouts, UnixDomainSocketConnection):
    """`redis.asyncio.UnixDomainSocketConnection` with lean socket timeouts."""


_LEAN: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: LeanConnection,
    SSLConnection: LeanSSLConnection,
    UnixDomainSocketConnection: LeanUnixDomainSocketConnection,
}


def lean_connection_class(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """The lean variant of one of redis-py's three connection classes; any other class as is."""
    return _LEAN.get(cls, cls)
