"""Cache key encoding: injective, escaped, within the length cap, namespace first."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cache.keys import KeySpace, encode_key

MAX = 200
SPACE = KeySpace("app:", "cache", MAX)

_UNESCAPE = re.compile(r"%u([0-9A-F]{4})|%([0-9A-F]{2})")


def _unescape(token: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), token)


def _parse(tokens: list[str], i: int) -> tuple[Any, int]:
    """Decode one part from the body's tokens: a reference decoder proving injectivity."""
    tok = tokens[i]
    if not tok.startswith("!"):
        assert "%" not in _UNESCAPE.sub("", tok), tok
        return ("s", _unescape(tok)), i + 1
    tag, rest = tok[1], tok[2:]
    if tag == "l":
        items = []
        i += 1
        for _ in range(int(rest)):
            item, i = _parse(tokens, i)
            items.append(item)
        return ("l", items), i
    value: Any = {
        "n": lambda r: None,
        "b": lambda r: {"1": True, "0": False}[r],
        "i": int,
        "h": lambda r: int(r, 16),
        "f": lambda r: repr(float(r)),
        "y": bytes.fromhex,
        "u": lambda r: uuid.UUID(hex=r),
    }[tag](rest)
    return (tag, value), i + 1


def decode_body(body: str) -> list[Any]:
    tokens = body.split(":")
    parts, i = [], 0
    while i < len(tokens):
        part, i = _parse(tokens, i)
        parts.append(part)
    return parts


def canon(part: Any) -> Any:
    """The reference decoder's view of an input part."""
    if isinstance(part, str):
        return ("s", part)
    if part is None:
        return ("n", None)
    if isinstance(part, bool):
        return ("b", part)
    if isinstance(part, int):
        return ("i" if abs(part) < 10**18 else "h", part)
    if isinstance(part, float):
        return ("f", repr(part))
    if isinstance(part, bytes):
        return ("y", part)
    if isinstance(part, uuid.UUID):
        return ("u", part)
    return ("l", [canon(p) for p in part])


hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=())),  # any code point, lone surrogates included
    st.text(alphabet="%:*?[]\\{}!#$ \t\n\x00ab%2", max_size=30),
)
scalars = st.one_of(
    hostile_text,
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**17, max_value=10**6000),
    st.floats(),
    st.binary(max_size=20),
    st.uuids(),
)
parts = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
keys = st.one_of(hostile_text, st.lists(parts, min_size=1, max_size=6).map(tuple))


@given(keys)
def test_encoding_decodes_back_so_is_injective(key: Any) -> None:
    expected = [canon(key)] if isinstance(key, str) else [canon(p) for p in key]
    assert decode_body(encode_key(key)) == expected


@given(keys, keys)
def test_distinct_keys_never_share_a_body(a: Any, b: Any) -> None:
    if decode_body(encode_key(a)) != decode_body(encode_key(b)):
        assert SPACE.body(a) != SPACE.body(b)


@given(keys)
def test_bodies_hold_no_glob_hash_tag_space_or_control_characters(key: Any) -> None:
    body = encode_key(key)
    assert not re.search(r"[*?\[\]\\{} \x00-\x1f\x7f\ud800-\udfff]", body)
    body.encode()  # valid UTF-8 for any input, surrogates included


@given(keys, st.sampled_from([None, "users", "a:b*{x}"]))
def test_every_key_fits_the_cap(key: Any, group: str | None) -> None:
    body = SPACE.body(key, group)
    for redis_key in (SPACE.value_key(body), SPACE.lock_key(body)):
        assert len(redis_key.encode()) <= MAX
        assert redis_key.startswith("app:cache:")


@given(st.text(min_size=MAX), hostile_text, hostile_text)
def test_capped_keys_stay_distinct(head: str, tail_a: str, tail_b: str) -> None:
    a, b = SPACE.body((head, tail_a)), SPACE.body((head, tail_b))
    assert len(SPACE.lock_key(a).encode()) <= MAX
    assert (a == b) == (tail_a == tail_b)


def test_long_key_keeps_a_readable_head_and_a_hash() -> None:
    body = SPACE.body(("user", "x" * 1000))
    assert body.startswith("user:xxxx")
    assert re.fullmatch(r"user:x+\$h[0-9a-f]{64}", body)
    assert len(SPACE.lock_key(body).encode()) == MAX


def test_long_multibyte_key_is_cut_on_a_character_boundary() -> None:
    body = SPACE.body("ж" * 500)
    assert len(SPACE.lock_key(body).encode()) <= MAX
    assert body.startswith("жжж")


class Color(Enum):
    RED = 1
    BLUE = 2


def test_typed_parts_are_distinct_from_their_text() -> None:
    samples: list[Any] = [
        "1",
        1,
        1.0,
        True,
        None,
        "None",
        b"1",
        (1,),
        [1, 2],
        [[1], 2],
        [1, [2]],
        {"a": 1},
        {"a": "1"},
        {1: "a"},
        frozenset({1, 2}),
        date(2024, 1, 2),
        datetime(2024, 1, 2),
        datetime(2024, 1, 2, tzinfo=timezone.utc),
        "2024-01-02",
        Decimal("1.0"),
        Decimal("1.00"),
        Color.RED,
        Color.BLUE,
        "RED",
    ]
    bodies = [encode_key(("p", s)) for s in samples]
    assert len(set(bodies)) == len(samples)


def test_dict_and_set_keys_ignore_insertion_order() -> None:
    assert encode_key(({"a": 1, "b": 2},)) == encode_key(({"b": 2, "a": 1},))
    assert encode_key(({3, 1, 2},)) == encode_key(({2, 3, 1},))


def test_a_string_key_is_its_one_part_tuple() -> None:
    assert encode_key("user") == encode_key(("user",))


def test_group_entries_do_not_collide_with_plain_keys() -> None:
    assert SPACE.body(("x",), "users") != SPACE.body(("#users", "x"))
    assert SPACE.body(("x",), "users") != SPACE.body(("users", "x"))
    assert SPACE.version_key("users") != SPACE.value_key(SPACE.body("$v:users"))


@pytest.mark.parametrize("bad", [object(), 1.5j, ()])
def test_unsupported_keys_are_refused(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_key(bad if bad == () else ("p", bad))


def test_a_prefix_that_leaves_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="max_key_length"):
        KeySpace("p" * 64, "n" * 32, 128)
