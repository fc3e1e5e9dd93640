"""Injective, length-capped Redis keys built from arbitrary key parts.

A key is a string (one part) or a tuple of parts. Each part becomes one token and tokens are
joined by `:`. Strings are kept readable: only `%`, `:`, glob characters (`*?[]\\`), braces, the
markers `!#$`, ASCII controls, space and lone surrogates are escaped as `%XX` or `%uXXXX`. Typed
parts start with `!` and a tag letter; containers carry their length. No literal marker ever comes
from user text, so distinct inputs always give distinct encodings, and an encoding never contains
a glob pattern or a brace.

Layout: prefix and namespace (neither may contain braces), then a body whose `{...}` is the one
Redis Cluster hash tag of the key, so every key one script or MGET touches lives in one slot:

    value    <prefix><namespace>:{<entry>}
    lock     <prefix><namespace>:$l:{<entry>}
    grouped  <prefix><namespace>:#{<group>}:<entry>
    its lock <prefix><namespace>:$l:#{<group>}:<entry>
    version  <prefix><namespace>:$v:{<group>}

All entries of a group share their group's slot: a group's hit stays one MGET and invalidating it
stays one SET, at the price of a large group weighing on one cluster node. An empty entry or group
is written `!` (never an encoding) because Redis ignores an empty hash tag.

Text longer than its share keeps a readable head and replaces the tail with `$h` + SHA-256 of the
whole text (hex; 32 digits for a group, whose share is smaller), so every key, lock keys included,
fits in `max_key_length` bytes.

Containers nest at most `MAX_KEY_DEPTH` levels inside a key: a deeper part, or one that contains
itself, is refused with a `TypeError` instead of exhausting the interpreter's stack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

__all__ = ["MAX_KEY_DEPTH", "Key", "KeySpace", "encode_key", "escape"]

Key = str | tuple[Any, ...]
"""A cache key: one string, or a tuple of parts (str, int, float, bool, None, bytes, UUID, date,
datetime, Decimal, Enum, and lists, tuples, sets and dicts of those, nested at most
`MAX_KEY_DEPTH` levels)."""

MAX_KEY_DEPTH = 32
"""How many containers deep a key part may nest (`("p", [[1]])` nests 2); real keys use 1 or 2.

Far below Python's recursion limit, so encoding never runs out of stack, even when called from
deep inside an application; a list or dict that contains itself reaches it after 32 levels.
"""

_ESCAPED = "%:*?[]\\{}!#$ \x7f" + "".join(chr(c) for c in range(0x20))
_TABLE: dict[int, str] = {ord(c): f"%{ord(c):02X}" for c in _ESCAPED}
_TABLE.update({c: f"%u{c:04X}" for c in range(0xD800, 0xE000)})

_HASH_MARK = "$h"
_DIGEST_LEN = 64
_GROUP_DIGEST_LEN = 32
_CAPPED_LEN = len(_HASH_MARK) + _DIGEST_LEN
_SMALL_INT = 10**18
_LOCK_INFIX = "$l:"
_EMPTY_TAG = "!"
# The group's share of a grouped body must still hold a hashed group name.
_MIN_BUDGET = len("#:") + _CAPPED_LEN + len(_HASH_MARK) + _GROUP_DIGEST_LEN


def escape(text: str) -> str:
    """Escape one string part; the result never contains a separator or marker character."""
    return text.translate(_TABLE)


def _too_deep() -> TypeError:
    return TypeError(
        f"cache key part nested deeper than {MAX_KEY_DEPTH} levels (MAX_KEY_DEPTH), or "
        "containing itself; pass a key function that returns flatter parts"
    )


def _tokens(part: Any, out: list[str], depth: int) -> None:
    # Order matters: bool before int, datetime before date, str/int before Enum so that
    # StrEnum/IntEnum members key the same as their plain values.
    if isinstance(part, str):
        out.append(part.translate(_TABLE))
    elif part is None:
        out.append("!n")
    elif isinstance(part, bool):
        out.append("!b1" if part else "!b0")
    elif isinstance(part, int):
        # Decimal text of huge ints is refused by Python (int_max_str_digits); hex is not.
        out.append(f"!i{part}" if -_SMALL_INT < part < _SMALL_INT else f"!h{part:x}")
    elif isinstance(part, float):
        out.append(f"!f{part!r}")
    elif isinstance(part, (bytes, bytearray, memoryview)):
        out.append("!y" + bytes(part).hex())
    elif isinstance(part, UUID):
        out.append("!u" + part.hex)
    elif isinstance(part, datetime):
        out.append("!t" + escape(part.isoformat()))
    elif isinstance(part, date):
        out.append("!d" + part.isoformat())
    elif isinstance(part, Decimal):
        out.append("!m" + str(part))
    elif isinstance(part, Enum):
        cls = type(part)
        # Module names hold no "/" and member names no ".", so this split is unambiguous.
        out.append(f"!e{escape(cls.__module__)}/{escape(cls.__qualname__)}.{escape(part.name)}")
    elif isinstance(part, (list, tuple)):
        if depth >= MAX_KEY_DEPTH:
            raise _too_deep()
        out.append(f"!l{len(part)}")
        for item in part:
            _tokens(item, out, depth + 1)
    elif isinstance(part, (set, frozenset)):
        if depth >= MAX_KEY_DEPTH:
            raise _too_deep()
        encoded = []
        for item in part:
            sub: list[str] = []
            _tokens(item, sub, depth + 1)
            encoded.append(":".join(sub))
        out.append(f"!s{len(encoded)}")
        out.extend(sorted(encoded))
    elif isinstance(part, Mapping):
        if depth >= MAX_KEY_DEPTH:
            raise _too_deep()
        pairs = []
        for k, v in part.items():
            ks: list[str] = []
            vs: list[str] = []
            _tokens(k, ks, depth + 1)
            _tokens(v, vs, depth + 1)
            pairs.append((":".join(ks), ":".join(vs)))
        out.append(f"!k{len(pairs)}")
        for k_enc, v_enc in sorted(pairs):
            out.append(k_enc)
            out.append(v_enc)
    else:
        raise TypeError(
            f"cannot use a {type(part).__name__} as a cache key part; "
            "pass a key function that returns str/int/UUID/... parts"
        )


def encode_key(key: Key) -> str:
    """The injective, uncapped body for `key` (a string, or a tuple of parts).

    Raises `TypeError` for an unsupported part, or one nested deeper than `MAX_KEY_DEPTH`.
    """
    if type(key) is str:
        return key.translate(_TABLE)
    if not isinstance(key, tuple):
        raise TypeError(f"cache key must be a str or a tuple of parts, not {type(key).__name__}")
    if not key:
        # "a" and ("a",) are one key by design, so () would collide with "" and ("",).
        raise ValueError("cache key must have at least one part")
    out: list[str] = []
    for part in key:
        _tokens(part, out, 0)
    return ":".join(out)


def _cap(text: str, limit: int, digest_len: int) -> str:
    """`text` if it fits `limit` bytes, else a readable head plus a hash of the whole text."""
    # Fast path: even all-4-byte UTF-8 fits.
    if len(text) * 4 <= limit:
        return text
    raw = text.encode()
    if len(raw) <= limit:
        return text
    digest = hashlib.sha256(raw).hexdigest()[:digest_len]
    # Cutting bytes may split a character; dropping the fragment keeps the head valid UTF-8.
    head = raw[: limit - digest_len - len(_HASH_MARK)].decode(errors="ignore")
    return f"{head}{_HASH_MARK}{digest}"


class KeySpace:
    """Builds the Redis keys of one cache: prefix and namespace first, then the capped body."""

    __slots__ = ("base", "budget", "group_budget")

    def __init__(self, prefix: str, namespace: str, max_length: int) -> None:
        self.base = f"{prefix}{namespace}:"
        if "{" in self.base or "}" in self.base:
            # Redis Cluster hashes the first {...} of a key: it must be the body's tag.
            raise ValueError(
                f"cache key prefix and namespace must not contain braces: {self.base!r}"
            )
        # The lock key is the longest key derived from a body: budget for its infix and the tag's
        # braces.
        self.budget = max_length - len(self.base.encode()) - len(_LOCK_INFIX) - len("{}")
        # A group name longer than this is hashed: it takes at most half of a grouped body, and
        # always leaves room for a hashed entry after it.
        shared = self.budget - len("#:")
        self.group_budget = min(shared // 2, shared - _CAPPED_LEN)
        if self.budget < _MIN_BUDGET:
            raise ValueError(
                f"max_key_length {max_length} leaves {self.budget} bytes after the prefix "
                f"{self.base!r}; need at least {_MIN_BUDGET}"
            )

    def cap(self, text: str) -> str:
        """`text` if it fits the budget, else a readable head plus a hash of the whole text."""
        return _cap(text, self.budget, _DIGEST_LEN)

    def group_tag(self, group: str) -> str:
        """The hash tag shared by `group`'s version key and entries."""
        return _cap(escape(group), self.group_budget, _GROUP_DIGEST_LEN) or _EMPTY_TAG

    def body(self, key: Key, group: str | None = None) -> str:
        """The capped body of `key` with its hash tag: the key itself, or its group."""
        if group is None:
            # Written out for the usual case, a short key: this runs on every hit.
            encoded = key.translate(_TABLE) if type(key) is str else encode_key(key)
            if len(encoded) * 4 <= self.budget:  # fits even as 4-byte UTF-8: `_cap`'s fast path
                return "{" + (encoded or _EMPTY_TAG) + "}"
            return "{" + (_cap(encoded, self.budget, _DIGEST_LEN) or _EMPTY_TAG) + "}"
        encoded = encode_key(key)
        tag = self.group_tag(group)
        rest = self.budget - len("#:") - len(tag.encode())
        return f"#{{{tag}}}:{_cap(encoded, rest, _DIGEST_LEN)}"

    def value_key(self, body: str) -> str:
        """Where the value of `body` lives."""
        return self.base + body

    def lock_key(self, body: str) -> str:
        """The cross-process fill lock of `body` (in the same cluster slot as its value)."""
        return f"{self.base}{_LOCK_INFIX}{body}"

    def version_key(self, group: str) -> str:
        """The version token of `group`; bumping it invalidates every entry of the group."""
        return f"{self.base}$v:{{{self.group_tag(group)}}}"
