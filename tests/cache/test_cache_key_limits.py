"""Cache key parts nest a bounded number of levels: deeper or cyclic parts are refused clearly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.cache.keys import MAX_KEY_DEPTH, KeySpace, encode_key

SPACE = KeySpace("app:", "cache", 200)
LIMIT_MESSAGE = f"nested deeper than {MAX_KEY_DEPTH} levels"

WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "tuple": lambda inner: (inner,),
    "list": lambda inner: [inner],
    "dict value": lambda inner: {"k": inner},
    "frozenset": lambda inner: frozenset([inner]),
}


def nested(wrap: Callable[[Any], Any], levels: int) -> Any:
    part: Any = "leaf"
    for _ in range(levels):
        part = wrap(part)
    return part


@pytest.mark.parametrize("kind", WRAPPERS)
def test_parts_nested_up_to_the_limit_are_encoded(kind: str) -> None:
    body = encode_key(("p", nested(WRAPPERS[kind], MAX_KEY_DEPTH)))
    assert body.endswith(":leaf")


@pytest.mark.parametrize("levels", [MAX_KEY_DEPTH + 1, 10_000])
@pytest.mark.parametrize("kind", WRAPPERS)
def test_parts_nested_deeper_are_refused_naming_the_limit(kind: str, levels: int) -> None:
    part = nested(WRAPPERS[kind], levels)
    with pytest.raises(TypeError, match=LIMIT_MESSAGE):
        encode_key(("p", part))
    with pytest.raises(TypeError, match=LIMIT_MESSAGE):
        SPACE.body(("p", part), "group")


def test_a_key_nested_10000_deep_at_the_top_is_refused() -> None:
    with pytest.raises(TypeError, match=LIMIT_MESSAGE):
        encode_key(nested(lambda inner: (inner,), 10_000))


def test_self_referencing_parts_are_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    table: dict[str, Any] = {}
    table["self"] = table
    for part in (loop, table, [table], ("x", [loop])):
        with pytest.raises(TypeError, match=LIMIT_MESSAGE):
            encode_key(("p", part))
