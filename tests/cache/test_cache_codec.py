"""Cache values: every supported type round-trips through real Redis; bad bytes are misses."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, computed_field

from core.cache import Cache, JsonCodec, MsgspecCodec, UnencodableValue
from core.cache.envelope import pack
from core.config import CacheSettings

CODECS = ["json", "msgspec"]


class Address(BaseModel):
    city: str
    zip: str | None = None


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    name: str
    joined: datetime
    address: Address
    tags: list[str] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def display(self) -> str:
        return f"{self.name} #{self.id}"


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str = ""


@dataclasses.dataclass
class Track:
    id: uuid.UUID
    points: list[Point]
    started: datetime
    owner: Address


class Kind(enum.Enum):
    A = "a"
    B = "b"


NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
USER = User(id=1, name="Zoë 🚀", joined=NOW, address=Address(city="Köln"), tags=["a", "b"])

CASES: list[tuple[Any, Any]] = [
    (None, None),
    (True, bool),
    (0, int),
    (-(2**63), int),
    (1.5, float),
    ("", str),
    ("héllo\x00\n🚀", str),
    ([1, "two", None, 3.5], list[Any]),
    ({"a": {"b": [1, 2]}, "ü": None}, dict[str, Any]),
    ((1, "x"), tuple[int, str]),
    ({1, 2, 3}, set[int]),
    (NOW, datetime),
    (datetime(2024, 1, 1, 12, 0), datetime),
    (date(2024, 2, 29), date),
    (timedelta(seconds=90), timedelta),
    (uuid.UUID(int=12345), uuid.UUID),
    (Decimal("12.3400"), Decimal),
    (b"plain bytes", bytes),
    (Kind.B, Kind),
    (USER, User),
    ([USER, USER], list[User]),
    (Point(1.0, -2.5, "p"), Point),
    (Track(uuid.UUID(int=7), [Point(0, 0), Point(1, 1)], NOW, Address(city="X")), Track),
    ({"u": USER}, dict[str, User]),
]


def _cache(client: aioredis.Redis, prefix: str, codec: str) -> Cache:
    return Cache(client, prefix=prefix, settings=CacheSettings.model_validate({"codec": codec}))


@pytest.mark.anyio
@pytest.mark.parametrize("codec", CODECS)
async def test_every_supported_type_round_trips_through_redis(
    redis_client: aioredis.Redis, key_prefix: str, codec: str
) -> None:
    cache = _cache(redis_client, key_prefix, codec)
    for i, (value, type_) in enumerate(CASES):
        assert await cache.set(("v", i), value, 30)
        got = await cache.get(("v", i), "missing", type_=type_)
        assert got == value, (value, got)
        assert type(got) is type(value)
    assert cache.stats.decode_failures == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # MessagePack's range
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.anyio
@pytest.mark.parametrize("codec", CODECS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values)
async def test_plain_data_round_trips_untyped(
    redis_client: aioredis.Redis, key_prefix: str, codec: str, value: Any
) -> None:
    cache = _cache(redis_client, key_prefix, codec)
    assert await cache.set("v", value, 30)
    assert await cache.get("v", "missing") == value


@given(
    st.builds(
        User,
        id=st.integers(min_value=-(2**63), max_value=2**63 - 1),  # MessagePack's range
        name=st.text(),
        joined=st.datetimes(timezones=st.just(timezone.utc)),
        address=st.builds(Address, city=st.text(), zip=st.none() | st.text()),
        tags=st.lists(st.text(), max_size=3),
    )
)
def test_models_round_trip_through_both_codecs(user: User) -> None:
    for codec in (JsonCodec(), MsgspecCodec()):
        assert codec.decode(codec.encode(user), User) == user


GARBAGE = [
    b"",
    b"not ours at all",
    b"\xdc\x01",  # magic, truncated header
    pack(1, 0.0, 0.0, b"", b"")[:-1] + b"\xff\xff",  # version length past the end
    pack(9, 2e9, 0.0, b"", b"{}"),  # another codec's entry
    pack(1, 2e9, 0.0, b"", b"{not json"),
    pack(2, 2e9, 0.0, b"", b"\xc1"),  # invalid msgpack
    pack(1, 2e9, 0.0, b"", b'{"id": "not a number"}'),  # valid JSON, wrong shape
    "😀".encode() * 3,
]


@pytest.mark.anyio
@pytest.mark.parametrize("codec", CODECS)
async def test_corrupt_bytes_are_a_counted_miss_and_get_replaced(
    redis_client: aioredis.Redis, key_prefix: str, codec: str
) -> None:
    cache = _cache(redis_client, key_prefix, codec)
    calls = 0

    async def load() -> Address:
        nonlocal calls
        calls += 1
        return Address(city="fresh")

    for i, junk in enumerate(GARBAGE):
        await redis_client.set(cache.redis_key(("k", i)), junk)
        got = await cache.get_or_set(("k", i), load, 30, type_=Address)
        assert got == Address(city="fresh")
        assert await cache.get_or_set(("k", i), load, 30, type_=Address) == got  # now a hit
    assert calls == len(GARBAGE)
    assert cache.stats.decode_failures == len(GARBAGE)
    assert cache.stats.hits == len(GARBAGE)


@pytest.mark.anyio
async def test_a_non_string_value_under_the_key_is_a_miss_and_replaced(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = _cache(redis_client, key_prefix, "json")
    await redis_client.rpush(cache.redis_key("k"), "x")

    async def load() -> str:
        return "fresh"

    assert await cache.get_or_set("k", load, 30) == "fresh"
    assert await cache.get("k") == "fresh"
    assert cache.stats.decode_failures == 1
    assert cache.stats.errors == 0


@pytest.mark.parametrize(
    ("codec", "value"),
    [(JsonCodec(), object()), (MsgspecCodec(), object()), (MsgspecCodec(), 2**64)],
)
def test_values_that_cannot_be_encoded_are_refused_loudly(codec: Any, value: Any) -> None:
    with pytest.raises(UnencodableValue):
        codec.encode(value)


@pytest.mark.anyio
async def test_an_unencodable_loader_result_raises_and_is_not_cached(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = _cache(redis_client, key_prefix, "json")

    async def load() -> object:
        return object()

    with pytest.raises(UnencodableValue):
        await cache.get_or_set("k", load, 30)
    assert await redis_client.get(cache.redis_key("k")) is None
    assert await redis_client.exists(cache.keys.lock_key(cache.keys.body("k"))) == 0


@pytest.mark.anyio
async def test_entries_are_readable_from_a_decoding_client(
    redis_url: str, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    decoding = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        writer = _cache(redis_client, key_prefix, "json")
        reader = _cache(decoding, key_prefix, "json")
        assert await writer.set("k", USER, 30)
        assert await reader.get("k", type_=User) == USER
        assert await writer.set("g", 1, 30, group="grp")
        assert await reader.get("g", group="grp") == 1
    finally:
        await decoding.aclose()
