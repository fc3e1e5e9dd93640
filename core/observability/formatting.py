"""Render flat field mappings as one JSON or logfmt line, and a formatter for whole apps.

Access and slow-query logs build their line directly, so any handler with a plain `%(message)s`
format writes structured output; `StructuredFormatter` renders every other record the same way.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring
from typing import Literal

__all__ = [
    "FIELDS_ATTR",
    "LogFormat",
    "StructuredFormatter",
    "json_string",
    "logfmt_value",
    "render_json",
    "render_logfmt",
    "renderer",
]

LogFormat = Literal["json", "logfmt"]
Renderer = Callable[[Mapping[str, object]], str]

FIELDS_ATTR = "fields"
"""LogRecord attribute holding the structured fields of access and slow-query records."""

_encode: Callable[[str], str] = encode_basestring
json_string = _encode
"""A JSON string literal for `text` (C-accelerated)."""


def _json_value(value: object) -> str:
    if isinstance(value, str):
        return _encode(value)
    kind = type(value)
    if kind is int:
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _encode(str(value))


def render_json(fields: Mapping[str, object]) -> str:
    """One JSON object on one line (control characters escaped)."""
    return "{" + ",".join([f"{_encode(k)}:{_json_value(v)}" for k, v in fields.items()]) + "}"


_LOGFMT_PLAIN = re.compile(r"[A-Za-z0-9_.:/<>{}@+,*%-]+")


def logfmt_value(value: object) -> str:
    """One logfmt value: bare when safe, else a quoted JSON-style string; None is empty."""
    text = value if isinstance(value, str) else _logfmt_scalar(value)
    if _LOGFMT_PLAIN.fullmatch(text) or not text:
        return text
    # Quoted form: JSON string escaping keeps the line single and unambiguous.
    return _encode(text)


def _logfmt_scalar(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def render_logfmt(fields: Mapping[str, object]) -> str:
    """`key=value` pairs; values with spaces, quotes, `=` or control characters are quoted.

    None renders as an empty value (`key=`).
    """
    return " ".join([f"{k}={logfmt_value(v)}" for k, v in fields.items()])


def renderer(log_format: LogFormat) -> Renderer:
    """The render function for a format name."""
    if log_format == "json":
        return render_json
    if log_format == "logfmt":
        return render_logfmt
    raise ValueError(f"log format must be 'json' or 'logfmt', got {log_format!r}")


class StructuredFormatter(logging.Formatter):
    """Formats every record as one JSON or logfmt line: time, level, logger, request id, message.

    Records carrying structured fields (access and slow-query logs) are rendered from those fields
    rather than from their pre-rendered message, so lines are never nested.
    """

    def __init__(self, log_format: LogFormat = "json") -> None:
        super().__init__()
        self._render = renderer(log_format)

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line."""
        out: dict[str, object] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            out.update(fields)
        else:
            out["request_id"] = getattr(record, "request_id", None)
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return self._render(out)

    @staticmethod
    def _timestamp(created: float) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        return f"{seconds}.{int(created % 1 * 1000):03d}Z"
