"""Cache key encoding: injective, escaped, within the length cap, namespace first, and every
key one command touches in one Redis Cluster slot."""

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
from pydantic import ValidationError
from redis.crc import key_slot

from core.cache.keys import KeySpace, encode_key
from core.config import RedisSettings

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
    """Decode an entry's encoding (the part of a body after its hash tag, or inside it)."""
    tokens = body.split(":")
    parts, i = [], 0
    while i < len(tokens):
        part, i = _parse(tokens, i)
        parts.append(part)
    return parts


def split_body(body: str) -> tuple[str | None, str]:
    """(unescaped group or None, entry encoding): the reference reading of a body's layout."""
    grouped = re.fullmatch(r"#\{([^{}]+)\}:([^{}]*)", body)
    if grouped is not None:
        tag, entry = grouped.groups()
        return _unescape("" if tag == "!" else tag), entry
    plain = re.fullmatch(r"\{([^{}]+)\}", body)
    assert plain is not None, body
    return None, "" if plain.group(1) == "!" else plain.group(1)


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes when it is not the whole key (the spec's rule)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end < 0 or end == start + 1:
        return None
    return key[start + 1 : end]


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


groups = st.one_of(st.none(), hostile_text)


@given(keys, groups)
def test_bodies_decode_back_to_their_key_and_group(key: Any, group: str | None) -> None:
    body = SPACE.body(key, group)
    if "$h" in body:  # capped: covered by the distinctness tests below
        return
    found_group, entry = split_body(body)
    assert found_group == group
    assert decode_body(entry) == decode_body(encode_key(key))


@given(keys, groups, keys, groups)
def test_distinct_keys_never_share_a_body(
    a: Any, group_a: str | None, b: Any, group_b: str | None
) -> None:
    if (decode_body(encode_key(a)), group_a) != (decode_body(encode_key(b)), group_b):
        assert SPACE.body(a, group_a) != SPACE.body(b, group_b)


@given(keys)
def test_bodies_hold_no_glob_hash_tag_space_or_control_characters(key: Any) -> None:
    body = encode_key(key)
    assert not re.search(r"[*?\[\]\\{} \x00-\x1f\x7f\ud800-\udfff]", body)
    body.encode()  # valid UTF-8 for any input, surrogates included


long_text = st.text(min_size=MAX // 4, max_size=2 * MAX)
any_group = st.one_of(groups, long_text, st.sampled_from(["users", "a:b*{x}", "", "!"]))


def _keys_of(space: KeySpace, key: Any, group: str | None) -> list[str]:
    body = space.body(key, group)
    found = [space.value_key(body), space.lock_key(body)]
    return found + ([] if group is None else [space.version_key(group)])


@given(st.one_of(keys, long_text), any_group)
def test_every_key_fits_the_cap(key: Any, group: str | None) -> None:
    for redis_key in _keys_of(SPACE, key, group):
        assert len(redis_key.encode()) <= MAX
        assert redis_key.startswith("app:cache:")


@given(
    st.text(alphabet="ab:%ж", max_size=80),
    st.integers(min_value=0, max_value=200),
    st.one_of(keys, long_text),
    any_group,
)
def test_every_key_fits_the_smallest_allowed_cap(
    prefix: str, slack: int, key: Any, group: str | None
) -> None:
    base = len(f"{prefix}n:".encode())
    smallest = base + len("$l:{}") + 102
    with pytest.raises(ValueError, match="max_key_length"):
        KeySpace(prefix, "n", smallest - 1)
    space = KeySpace(prefix, "n", smallest + slack)
    for redis_key in _keys_of(space, key, group):
        assert len(redis_key.encode()) <= smallest + slack


@given(st.one_of(keys, long_text), any_group)
def test_keys_touched_together_share_one_hash_tag_and_slot(key: Any, group: str | None) -> None:
    found = _keys_of(SPACE, key, group)
    tags = {hash_tag(k) for k in found}
    assert len(tags) == 1 and None not in tags, found  # an empty tag would hash the whole key
    assert len({key_slot(k.encode()) for k in found}) == 1
    if group is not None:  # a group's entries share its version key's slot
        assert hash_tag(SPACE.version_key(group)) == hash_tag(
            SPACE.value_key(SPACE.body("x", group))
        )


@given(st.text(min_size=MAX), hostile_text, hostile_text, any_group)
def test_capped_keys_stay_distinct(head: str, tail_a: str, tail_b: str, group: str | None) -> None:
    a, b = SPACE.body((head, tail_a), group), SPACE.body((head, tail_b), group)
    assert len(SPACE.lock_key(a).encode()) <= MAX
    assert (a == b) == (tail_a == tail_b)


@given(st.text(min_size=MAX), hostile_text, hostile_text)
def test_capped_groups_stay_distinct(head: str, tail_a: str, tail_b: str) -> None:
    a, b = head + tail_a, head + tail_b
    assert (SPACE.version_key(a) == SPACE.version_key(b)) == (tail_a == tail_b)
    assert (SPACE.body("k", a) == SPACE.body("k", b)) == (tail_a == tail_b)


def test_long_key_keeps_a_readable_head_and_a_hash() -> None:
    body = SPACE.body(("user", "x" * 1000))
    assert re.fullmatch(r"\{user:x+\$h[0-9a-f]{64}\}", body)
    assert len(SPACE.lock_key(body).encode()) == MAX


def test_long_group_keeps_a_readable_head_and_a_hash_in_both_its_keys() -> None:
    body = SPACE.body(("user", "x" * 1000), "g" * 1000)
    tag = re.fullmatch(r"#\{(g+\$h[0-9a-f]{32})\}:user:x+\$h[0-9a-f]{64}", body)
    assert tag is not None, body
    assert SPACE.version_key("g" * 1000) == f"app:cache:$v:{{{tag.group(1)}}}"
    assert len(SPACE.lock_key(body).encode()) == MAX


def test_long_multibyte_key_is_cut_on_a_character_boundary() -> None:
    body = SPACE.body("ж" * 500)
    assert len(SPACE.lock_key(body).encode()) <= MAX
    assert body.startswith("{жжж")


def test_readable_layout() -> None:
    assert SPACE.value_key(SPACE.body(("user", 1))) == "app:cache:{user:!i1}"
    assert SPACE.lock_key(SPACE.body(("user", 1))) == "app:cache:$l:{user:!i1}"
    assert SPACE.value_key(SPACE.body(("user", 1), "users")) == "app:cache:#{users}:user:!i1"
    assert SPACE.version_key("users") == "app:cache:$v:{users}"
    # Braces in key parts and groups are escaped: they never open a hash tag of their own.
    assert SPACE.value_key(SPACE.body("{a}", "{g}")) == "app:cache:#{%7Bg%7D}:%7Ba%7D"


def test_empty_key_and_group_still_get_a_hash_tag() -> None:
    assert SPACE.body("") == SPACE.body(("",)) == "{!}"
    assert SPACE.body("!") == "{%21}"
    assert SPACE.body("", "") == "#{!}:"
    assert SPACE.version_key("") == "app:cache:$v:{!}"
    assert SPACE.version_key("!") == "app:cache:$v:{%21}"


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


@pytest.mark.parametrize("prefix", ["a{b}:", "{tenant}:", "a}", "a{"])
def test_a_prefix_with_braces_is_refused(prefix: str) -> None:
    # The prefix comes before the cache's hash tag: a brace in it would choose the slot instead.
    with pytest.raises(ValueError, match="braces"):
        KeySpace(prefix, "cache", 200)
    with pytest.raises(ValidationError) as info:
        RedisSettings(key_prefix=prefix)
    assert [e["loc"] for e in info.value.errors()] == [("key_prefix",)]


def test_the_default_and_usual_prefixes_are_accepted() -> None:
    for prefix in ("dualcore:", "svc-1.prod:", "a/b|c:", ""):
        assert RedisSettings(key_prefix=prefix).key_prefix == prefix
        KeySpace(prefix, "cache", 200)
