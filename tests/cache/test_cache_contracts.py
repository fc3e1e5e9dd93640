"""Finer contracts of the cache on real Redis: how many Redis calls a fill and its joiners cost,
which entries refresh early (the XFetch rule itself), what a waiting filler accepts and how it
backs off, how failures around the lock are absorbed, and what `aclose` waits for."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import NoPermissionError

import core.cache.cache as cache_module
from core.cache import Cache, CacheUnavailable
from core.cache.cache import _POLL_FIRST, _POLL_MAX
from core.cache.envelope import pack
from core.config import CacheSettings
from core.resilience import CircuitBreaker
from tests.support.ports import free_port

pytestmark = pytest.mark.anyio

MAX_TTL = 10 * 365 * 86400.0


def make(client: aioredis.Redis, prefix: str, breaker: Any = None, **overrides: Any) -> Cache:
    # A generous operation timeout: these tests are about what the cache does with Redis up, and
    # a loaded machine must not turn a call into a fail-open skip.
    settings = CacheSettings.model_validate({"operation_timeout": 10.0, **overrides})
    return Cache(client, prefix=prefix, settings=settings, breaker=breaker)


class Gate:
    """A circuit breaker stand-in: counts the Redis calls and lets through the first `allowed`."""

    def __init__(self, allowed: float = math.inf) -> None:
        self.calls = 0
        self.allowed = allowed

    def allow(self) -> bool:
        self.calls += 1
        return self.calls <= self.allowed

    def close_now(self) -> None:
        """Refuse every call from now on."""
        self.allowed = self.calls

    def record_success(self) -> None:
        pass

    def record_failure(self, exc: BaseException) -> None:
        pass


def _const(value: Any) -> Callable[[], Any]:
    async def load() -> Any:
        return value

    return load


async def _write_entry(
    client: aioredis.Redis,
    cache: Cache,
    key: str,
    value: Any,
    *,
    expires_in: float,
    delta: float,
    version: bytes = b"",
    group: str | None = None,
) -> None:
    """Store an entry as `cache` would, with a chosen logical expiry and load time, while Redis
    keeps it for another minute whatever the logical expiry says."""
    raw = pack(
        cache.codec.codec_id, time.time() + expires_in, delta, version, cache.codec.encode(value)
    )
    await client.set(cache.redis_key(key, group=group), raw, px=60_000)


async def _until(check: Callable[[], bool]) -> None:
    """Poll `check` until it holds; fail after 5 seconds."""
    with anyio.fail_after(5):
        while not check():  # noqa: ASYNC110 - the cache's counters have no event to wait on
            await anyio.sleep(0.005)


# --- ttl bounds ----------------------------------------------------------------------------------


async def test_the_longest_allowed_ttl_is_accepted(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    assert await cache.set("k", 1, MAX_TTL) is True
    assert await redis_client.pttl(cache.redis_key("k")) > (MAX_TTL - 60) * 1000
    assert await cache.get_or_set("other", _const(2), MAX_TTL) == 2
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", 1, MAX_TTL + 1)


async def test_expiries_reach_redis_in_whole_milliseconds_and_never_zero(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis refuses PX 0: a positive ttl or lock_ttl that rounds down to 0 ms becomes 1 ms.
    real_set = redis_client.set
    expiries: list[Any] = []

    async def recording_set(*args: Any, **kwargs: Any) -> Any:
        expiries.append(kwargs.get("px"))
        return await real_set(*args, **kwargs)

    monkeypatch.setattr(redis_client, "set", recording_set)
    cache = make(redis_client, key_prefix)
    assert await cache.set("a", 1, 0.0004) is True
    assert await cache.set("b", 1, 2.5) is True
    assert expiries == [1, 2500]
    for lock_ttl, lock_px in ((0.0004, 1), (12.5, 12_500)):
        expiries.clear()
        locking = make(redis_client, key_prefix, lock_ttl=lock_ttl)
        assert await locking.get_or_set(("c", lock_ttl), _const(1), 30) == 1
        assert expiries == [lock_px]  # the fill lock (the entry goes through the store script)


class _ReversedJson:
    """A codec of its own: stores JSON text backwards, under another codec id."""

    codec_id = 200

    def encode(self, value: Any) -> bytes:
        return json.dumps(value).encode()[::-1]

    def decode(self, data: bytes, type_: Any) -> Any:
        return json.loads(data[::-1])


async def test_a_codec_passed_in_is_the_one_used(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    codec = _ReversedJson()
    cache = Cache(redis_client, prefix=key_prefix, codec=codec)
    assert cache.codec is codec
    assert await cache.set("k", {"a": 1}, 30)
    assert await cache.get("k") == {"a": 1}
    raw = await redis_client.get(cache.redis_key("k"))
    assert raw is not None and raw.endswith(b'{"a": 1}'[::-1])
    # The default codec reads it as another codec's entry: a miss.
    assert await make(redis_client, key_prefix).get("k", "absent") == "absent"


# --- Redis calls of a fill and of the callers joining it ------------------------------------------


async def test_callers_joining_a_running_fill_cost_no_redis_call(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    gate = Gate()
    cache = make(redis_client, key_prefix, breaker=gate)
    started, release = anyio.Event(), anyio.Event()
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        started.set()
        await release.wait()
        return "value"

    loop = asyncio.get_running_loop()
    with anyio.fail_after(5):
        first = loop.create_task(cache.get_or_set("k", load, 30))
        await started.wait()
        joiners = [loop.create_task(cache.get_or_set("k", load, 30)) for _ in range(3)]
        await asyncio.sleep(0)  # the joiners run up to their wait for the fill
        release.set()
        results = await asyncio.gather(first, *joiners)
    assert results == ["value"] * 4
    assert loads == 1
    # The fill: its miss, the lock, a second look under the lock, then store-and-release in one
    # script. The joiners asked Redis nothing, and counted no miss of their own.
    assert gate.calls == 4
    assert cache.stats.misses == 1
    assert cache.stats.loader_calls == 1
    assert await cache.get_or_set("k", load, 30) == "value"
    assert gate.calls == 5  # a hit is one round trip


async def test_readers_during_an_early_refresh_keep_the_current_value_without_waiting(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    gate = Gate()
    cache = make(redis_client, key_prefix, breaker=gate)
    # Due for refresh at once: with certainty, not by chance.
    await _write_entry(redis_client, cache, "k", "current", expires_in=0, delta=0.05)
    started, release = anyio.Event(), anyio.Event()

    async def refresh() -> str:
        started.set()
        await release.wait()
        return "refreshed"

    async def must_not_load() -> str:
        raise AssertionError("a second refresh in the same process")

    loop = asyncio.get_running_loop()
    with anyio.fail_after(5):
        refresher = loop.create_task(cache.get_or_set("k", refresh, 60))
        await started.wait()
        before = gate.calls
        # The refresh is still loading: readers get the still valid entry, one GET each, and
        # neither wait for the refresh nor try for its lock.
        assert await cache.get_or_set("k", must_not_load, 60) == "current"
        assert await cache.get_or_set("k", must_not_load, 60) == "current"
        assert gate.calls - before == 2
        release.set()
        assert await refresher == "refreshed"
    assert cache.stats.early_refreshes == 1
    assert await cache.get("k") == "refreshed"


# --- which entries refresh early ----------------------------------------------------------------


def _fix_draw(monkeypatch: pytest.MonkeyPatch, exp_draw: float) -> None:
    """Make XFetch's random term, -ln(1 - random()), equal `exp_draw`."""
    monkeypatch.setattr(random, "random", lambda: 1.0 - math.exp(-exp_draw))


async def test_early_refresh_follows_the_xfetch_rule(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refresh when now + load_time * beta * draw reaches the expiry: here 10 s * 2 * 2 = 40 s.
    _fix_draw(monkeypatch, 2.0)
    cache = make(redis_client, key_prefix, early_refresh=2)
    await _write_entry(redis_client, cache, "within", "old", expires_in=25, delta=10)
    await _write_entry(redis_client, cache, "beyond", "old", expires_in=100, delta=10)
    assert await cache.get_or_set("within", _const("new"), 60) == "new"
    assert await cache.get_or_set("beyond", _const("new"), 60) == "old"
    assert cache.stats.early_refreshes == 1


async def test_entries_without_a_load_time_or_with_refresh_off_never_refresh_early(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fix_draw(monkeypatch, 30.0)  # a draw from far in the tail: refresh if anything would
    cache = make(redis_client, key_prefix, early_refresh=10)
    # `set` has no load time to weigh: its entries live until they expire.
    assert await cache.set("set", "stored", 60)
    assert await cache.get_or_set("set", _const("loaded"), 60) == "stored"
    # Nor does an entry recorded with a zero load time, even past its logical expiry.
    await _write_entry(redis_client, cache, "instant", "stored", expires_in=-1, delta=0)
    assert await cache.get_or_set("instant", _const("loaded"), 60) == "stored"
    # early_refresh=0 turns the refresh off, whatever the entry says.
    off = make(redis_client, key_prefix, early_refresh=0)
    await _write_entry(redis_client, off, "slow", "stored", expires_in=-1, delta=5)
    assert await off.get_or_set("slow", _const("loaded"), 60) == "stored"
    assert cache.stats.early_refreshes == off.stats.early_refreshes == 0
    assert cache.stats.loader_calls == off.stats.loader_calls == 0


async def test_get_returns_an_entry_due_for_refresh(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    await _write_entry(redis_client, cache, "k", "current", expires_in=0, delta=0.05)
    assert await cache.get("k", "absent") == "current"
    assert await cache.get("k", "absent") == "current"
    assert cache.stats.hits == 2
    assert cache.stats.early_refreshes == 0


# --- a filler waiting for another process -------------------------------------------------------


class Item(BaseModel):
    id: int
    name: str


async def test_a_waiter_takes_a_grouped_typed_value_another_process_stored(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    ours = make(redis_client, key_prefix, lock_wait=10)
    theirs = make(redis_client, key_prefix)
    lock_key = ours.keys.lock_key(ours.keys.body("k", "g"))
    await redis_client.set(lock_key, "their-token", px=60_000)  # they keep it throughout

    async def other_process_fills() -> None:
        await _until(lambda: ours.stats.lock_waits == 1)
        assert await theirs.set("k", Item(id=1, name="theirs"), 30, group="g")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_process_fills)
            found = await ours.get_or_set(
                "k", _const(Item(id=2, name="ours")), 30, type_=Item, group="g"
            )
    assert found == Item(id=1, name="theirs")
    assert isinstance(found, Item)
    assert ours.stats.lock_timeouts == 0
    assert ours.stats.loader_calls == 0
    # Polling is not reading: only the caller's own first lookup is counted.
    assert (ours.stats.misses, ours.stats.hits) == (1, 0)


async def test_a_waiter_takes_a_stored_value_even_when_it_is_due_for_refresh(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    ours, theirs = make(redis_client, key_prefix, lock_wait=10), make(redis_client, key_prefix)
    lock_key = ours.keys.lock_key(ours.keys.body("k"))
    await redis_client.set(lock_key, "their-token", px=60_000)

    async def other_process_fills() -> None:
        await _until(lambda: ours.stats.lock_waits == 1)
        await _write_entry(redis_client, theirs, "k", "theirs", expires_in=0, delta=0.05)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_process_fills)
            assert await ours.get_or_set("k", _const("ours"), 30) == "theirs"
    assert ours.stats.lock_timeouts == 0
    assert ours.stats.loader_calls == 0


async def test_a_waiter_polls_with_a_doubling_delay_capped_at_the_maximum(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = make(redis_client, key_prefix, lock_wait=30), make(redis_client, key_prefix)
    lock_key = ours.keys.lock_key(ours.keys.body("k"))
    await redis_client.set(lock_key, "their-token", px=60_000)
    delays: list[float] = []
    real_sleep = anyio.sleep

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 7:
            assert await theirs.set("k", "theirs", 30)
        await real_sleep(delay)

    monkeypatch.setattr(cache_module, "sleep", recording_sleep)
    with anyio.fail_after(10):
        assert await ours.get_or_set("k", _const("ours"), 30) == "theirs"
    expected = [min(_POLL_FIRST * 2**i, _POLL_MAX) for i in range(7)]
    assert delays == pytest.approx(expected)
    assert expected[-1] == _POLL_MAX  # the cap was reached


async def test_a_waiter_that_may_not_wait_loads_and_stores(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix, lock_wait=0)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))
    await redis_client.set(lock_key, "stuck-token", px=60_000)
    with anyio.fail_after(5):
        assert await cache.get_or_set("k", _const("ours"), 30) == "ours"
    assert cache.stats.lock_timeouts == 1
    assert await cache.get("k") == "ours"  # stored even without the lock
    assert await redis_client.get(lock_key) == b"stuck-token"


# --- the second look under the lock -------------------------------------------------------------


async def test_a_value_stored_just_before_we_got_the_lock_is_taken_even_if_due_for_refresh(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, other = make(redis_client, key_prefix), make(redis_client, key_prefix)
    acquire = cache._acquire

    async def acquire_after_another_fill(lkey: str) -> str | None:
        await _write_entry(redis_client, other, "k", "theirs", expires_in=0, delta=0.05)
        return await acquire(lkey)

    monkeypatch.setattr(cache, "_acquire", acquire_after_another_fill)
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "ours"

    assert await cache.get_or_set("k", load, 30) == "theirs"
    assert loads == 0


async def test_a_fill_stores_under_the_group_version_current_when_it_got_the_lock(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make(redis_client, key_prefix)
    assert await cache.set("sibling", 1, 30, group="g")  # the group has a version already
    acquire = cache._acquire

    async def acquire_after_an_invalidation(lkey: str) -> str | None:
        # The group is invalidated between our miss and our lock: the load that follows reads
        # the new data, so its entry belongs to the new version.
        await cache.invalidate_group("g")
        return await acquire(lkey)

    monkeypatch.setattr(cache, "_acquire", acquire_after_an_invalidation)
    assert await cache.get_or_set("k", _const("fresh"), 30, group="g") == "fresh"
    assert await cache.get("k", group="g") == "fresh"


# --- failures around the lock -------------------------------------------------------------------


async def test_a_fill_that_loses_redis_at_the_lock_asks_redis_nothing_more(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    gate = Gate(allowed=1)  # the lookup goes through; Redis is skipped from the lock on
    cache = make(redis_client, key_prefix, breaker=gate)
    assert await cache.get_or_set("k", _const("loaded"), 30) == "loaded"
    assert cache.stats.bypassed == 1
    assert gate.calls == 2
    assert await redis_client.get(cache.redis_key("k")) is None


async def test_redis_skipped_by_an_open_breaker_is_reported_per_operation(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix, breaker=Gate(allowed=0))
    assert await cache.set("k", 1, 30) is False
    assert await cache.set("k", 1, 30, group="g") is False
    skipped = "Redis skipped: circuit breaker open"
    with pytest.raises(CacheUnavailable) as deleting:
        await cache.delete("k")
    assert str(deleting.value) == f"cache delete failed: {skipped}"
    with pytest.raises(CacheUnavailable) as invalidating:
        await cache.invalidate_group("g")
    assert str(invalidating.value) == f"cache invalidate group failed: {skipped}"


async def test_redis_refusing_a_command_is_an_outage_not_a_foreign_value(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An error reply other than WRONGTYPE (here an ACL refusal) says nothing about the value
    # under the key: it is counted and reported like any other failed Redis call.
    client = aioredis.Redis.from_url(redis_url)
    refusal = NoPermissionError("this user has no permissions to run this command")

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise refusal

    client.execute_command = refused  # type: ignore[method-assign]
    try:
        cache = make(client, key_prefix)
        with caplog.at_level(logging.DEBUG, logger="core.cache.cache"):
            assert await cache.get("k", "absent") == "absent"
        with pytest.raises(CacheUnavailable) as deleting:
            await cache.delete("k")
    finally:
        await client.aclose()
    assert str(deleting.value) == "cache delete failed: Redis unreachable: NoPermissionError"
    assert (cache.stats.errors, cache.stats.decode_failures, cache.stats.misses) == (2, 0, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "core.cache.cache"]
    assert messages == [f"cache: Redis call failed: {refusal!r}"]


async def test_a_loader_error_is_raised_even_when_the_unlock_cannot_reach_redis(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    gate = Gate()
    cache = make(redis_client, key_prefix, breaker=gate)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))

    async def fails_as_redis_goes() -> str:
        gate.close_now()
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        await cache.get_or_set("k", fails_as_redis_goes, 30)
    assert cache.stats.bypassed == 1  # the unlock was tried
    assert await redis_client.pttl(lock_key) > 0  # left to its TTL


async def test_a_loader_error_is_raised_even_when_a_foreign_value_replaced_the_lock(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))

    async def fails_after_the_lock_was_clobbered() -> str:
        await redis_client.delete(lock_key)
        await redis_client.rpush(lock_key, "not a lock")
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        await cache.get_or_set("k", fails_after_the_lock_was_clobbered, 30)
    assert await redis_client.lrange(lock_key, 0, -1) == [b"not a lock"]


# --- counters, hooks and shutdown ---------------------------------------------------------------


async def test_every_loader_call_is_counted(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    for i in range(3):
        assert await cache.get_or_set(("k", i), _const(i), 30) == i
    assert await cache.get_or_set(("k", 0), _const("again"), 30) == 0
    assert cache.stats.loader_calls == 3


async def test_the_metrics_hook_gets_one_per_event_and_the_load_time(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    events: list[tuple[str, float]] = []
    cache = Cache(
        redis_client, prefix=key_prefix, metrics=lambda event, value: events.append((event, value))
    )

    async def load() -> str:
        await anyio.sleep(0.01)
        return "v"

    assert await cache.get_or_set("k", load, 30) == "v"
    assert await cache.get_or_set("k", load, 30) == "v"
    assert [e for e, _ in events] == ["misses", "loader_calls", "hits"]
    assert events[0][1] == events[2][1] == 1.0
    assert events[1][1] >= 0.01


async def test_the_default_prefix_is_empty(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)  # never connected: only keys are computed
    cache = Cache(client)
    await client.aclose()
    assert cache.redis_key("k").startswith(f"{cache.settings.namespace}:")


async def test_a_failing_metrics_hook_is_logged_with_the_event(
    redis_client: aioredis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(event: str, value: float) -> None:
        raise RuntimeError("metrics backend down")

    cache = Cache(redis_client, prefix=key_prefix, metrics=hook)
    with caplog.at_level(logging.ERROR, logger="core.cache.cache"):
        assert await cache.get("k", "absent") == "absent"
    records = [r for r in caplog.records if r.name == "core.cache.cache"]
    assert [r.getMessage() for r in records] == ["cache metrics hook failed for misses"]
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


async def test_aclose_returns_once_its_fills_have_released_their_locks(
    redis_client: aioredis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make(redis_client, key_prefix)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))
    started = anyio.Event()

    async def forever() -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"

    with caplog.at_level(logging.ERROR, logger="asyncio"), anyio.fail_after(5):
        caller = asyncio.get_running_loop().create_task(cache.get_or_set("k", forever, 30))
        await started.wait()
        assert await redis_client.exists(lock_key) == 1
        await cache.aclose()
        # Nothing of the fill is left running: its lock is already gone.
        assert await redis_client.exists(lock_key) == 0
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0)  # let any callback of the finished fill run
    assert [r for r in caplog.records if r.name == "asyncio"] == []
    assert await redis_client.get(cache.redis_key("k")) is None


class Recording:
    """A breaker of one's own: records what the cache tells it."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def allow(self) -> bool:
        self.heard.append("allow")
        return True

    def record_success(self) -> None:
        self.heard.append("success")

    def record_failure(self, exc: BaseException) -> None:
        self.heard.append(type(exc).__name__)


class RecordingCircuitBreaker(CircuitBreaker):
    """A subclass of dualcore's breaker that overrides the calls: its overrides are used."""

    def __init__(self) -> None:
        super().__init__("mine")
        self.heard: list[str] = []

    def allow(self) -> bool:
        self.heard.append("allow")
        return super().allow()

    def record_success(self) -> None:
        self.heard.append("success")
        super().record_success()

    def record_failure(self, exc: BaseException) -> None:
        self.heard.append(type(exc).__name__)
        super().record_failure(exc)


@pytest.mark.parametrize("kind", [Recording, RecordingCircuitBreaker])
async def test_a_breaker_of_ones_own_hears_every_calls_outcome(
    kind: Callable[[], Recording | RecordingCircuitBreaker],
    redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    breaker = kind()
    cache = make(redis_client, key_prefix, breaker=breaker)
    assert await cache.set("k", 1)
    assert await cache.get("k") == 1
    assert breaker.heard == ["allow", "success"] * 2
    await redis_client.rpush(cache.redis_key("list"), "x")  # WRONGTYPE: Redis answered
    assert await cache.get("list", "absent") == "absent"
    assert breaker.heard[4:] == ["allow", "success"]
    down = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        unreachable = make(down, key_prefix, breaker=breaker)
        assert await unreachable.get("k", "absent") == "absent"
    finally:
        await down.aclose()
    assert breaker.heard[6:] == ["allow", "ConnectionError"]
