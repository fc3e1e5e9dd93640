"""The local tier across processes: after a write acknowledged in this process, reader processes
serving the key from their own tiers stop serving the old value within the stated bound.

Each reader (tests/support/tier_reader.py) reads one key through its tier as fast as it can and
reports when it last served each value; this process writes a numbered value, a delete or a
group invalidation every few milliseconds and notes when each was acknowledged. The lag of one
write in one reader is how long after the acknowledgement the reader still served a value the
write replaced. Run with `-s` to see the measured p50, p99 and max.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.cache import Cache
from core.config import CacheSettings

pytestmark = pytest.mark.anyio

READER = Path(__file__).resolve().parents[1] / "support" / "tier_reader.py"
ROOT = READER.parents[2]
READERS = 2
WRITES = 60
BOUND = 0.5
"""Seconds. Delivery on loopback takes well under a millisecond; the allowance is for a
machine whose cores are all busy (readers, this process, Redis). Without invalidation a reader
would serve the old value for its whole local TTL (60 s here)."""


async def _start_reader(redis_url: str, prefix: str, group: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(READER),
        redis_url,
        prefix,
        "key",
        group,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def _report(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    report: dict[str, Any] = json.loads(out.splitlines()[-1])
    return report


@pytest.mark.parametrize("operation", ["set", "delete", "invalidate_group"])
async def test_no_reader_serves_a_replaced_value_past_the_bound(
    operation: str, redis_url: str, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    group = "g" if operation == "invalidate_group" else ""
    writer = Cache(redis_client, prefix=key_prefix, settings=CacheSettings())
    gkw: dict[str, Any] = {"group": group} if group else {}
    await writer.set("key", 0, ttl=60, **gkw)
    readers = [await _start_reader(redis_url, key_prefix, group) for _ in range(READERS)]
    try:
        # (acknowledged at, the values that must no longer be served after it)
        writes: list[tuple[float, set[str]]] = []
        for i in range(1, WRITES + 1):
            await writer.set("key", i, ttl=60, **gkw)
            acked = time.monotonic()
            if operation == "set":
                writes.append((acked, {str(v) for v in range(i)}))
            await asyncio.sleep(0.01)
            if operation == "delete":
                await writer.delete("key")
            elif operation == "invalidate_group":
                await writer.invalidate_group(group)
            if operation != "set":
                writes.append((time.monotonic(), {str(v) for v in range(i + 1)}))
            await asyncio.sleep(0.01)
        await writer.set("key", "stop", ttl=60, **gkw)
        reports = [await _report(proc) for proc in readers]
    finally:
        for proc in readers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await writer.aclose()

    lags = []
    for report in reports:
        # Served from its own tier for most reads, or the test would show nothing.
        assert report["local_hits"] > WRITES * 10, report["local_hits"]
        served = report["last_served"]
        assert '"stop"' in served
        for acked, replaced in writes:
            last = max((served[v] for v in replaced if v in served), default=0.0)
            lags.append(max(0.0, last - acked))
    lags.sort()
    p99 = lags[int(len(lags) * 0.99) - 1]
    print(
        f"\n{operation}: {len(lags)} write x reader pairs; lag p50 "
        f"{statistics.median(lags) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms, "
        f"max {lags[-1] * 1e3:.3f} ms"
    )
    assert lags[-1] < BOUND
