"""What the observing middleware learn from the response on its way out."""

from __future__ import annotations

from time import perf_counter

from core.observability.asgi_types import Message, Send

__all__ = ["ResponseWatch"]


class ResponseWatch:
    """A `send` wrapper that remembers the status and when the final body chunk left.

    `finish()` gives (status, end time); a response that never completed (the app raised) is
    reported as a 500 ending now.
    """

    __slots__ = ("end", "send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.end = 0.0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.end = perf_counter()
        await self.send(message)

    def finish(self) -> tuple[int, float]:
        """(status, end): streaming responses end at their last chunk."""
        if not self.end:
            return 500, perf_counter()
        return self.status, self.end
