"""The error embedded servers raise."""

from __future__ import annotations

__all__ = ["EmbeddedServerError"]


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped."""
