"""Render flat field mappings as one JSON or logfmt line, and a formatter for whole apps.

Access and slow-query logs build their line directly, so any handler with a plain `%(message)s`
format writes structured output; `StructuredFormatter` renders every other record the same way.

A rendered line never holds a character a reader could take for a line break or a terminal
control, so request text cannot split a line or forge another: besides the ASCII controls JSON
escapes, C1 controls (U+0080-U+009F, NEL included), U+2028, U+2029 and lone surrogates (which
no UTF-8 stream can write) are escaped as `\\uXXXX`.
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
    "escape_unsafe",
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
# `encode_basestring` escapes everything below U+0020; these are the rest that can break a line.
_UNSAFE = re.compile(r"[\x80-\x9f\u2028\u2029\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_unsafe(text: str) -> str:
    """`text` with C1 controls, U+2028, U+2029 and lone surrogates written as `\\uXXXX`.

    Only valid where every such character sits inside a JSON string literal: a JSON line, or a
    logfmt line (its values are bare ASCII or JSON-quoted). ASCII text is returned as is.
    """
    return text if text.isascii() else _UNSAFE.sub(_escape_char, text)


def json_string(text: str) -> str:
    """A JSON string literal for `text` that cannot break a line (see the module docstring)."""
    out = _encode(text)
    return out if out.isascii() else _UNSAFE.sub(_escape_char, out)


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
    """One JSON object on one line (control characters and line separators escaped)."""
    line = "{" + ",".join([f"{_encode(k)}:{_json_value(v)}" for k, v in fields.items()]) + "}"
    return line if line.isascii() else _UNSAFE.sub(_escape_char, line)


_LOGFMT_PLAIN = re.compile(r"[A-Za-z0-9_.:/<>{}@+,*%-]+")


def logfmt_value(value: object) -> str:
    """One logfmt value: bare when safe, else a quoted JSON-style string; None is empty."""
    text = value if isinstance(value, str) else _logfmt_scalar(value)
    if _LOGFMT_PLAIN.fullmatch(text) or not text:
        return text
    # Quoted form: JSON string escaping keeps the line single and unambiguous.
    out = _encode(text)
    return out if out.isascii() else _UNSAFE.sub(_escape_char, out)


def _logfmt_scalar(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def render_logfmt(fields: Mapping[str, object]) -> str:
    """`key=value` pairs; a value that is not a plain ASCII word is quoted as a JSON string.

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
