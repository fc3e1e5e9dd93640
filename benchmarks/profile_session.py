"""Where an in-process primary-key read's time goes: py-spy on each variant of `bench_session.py`.

    python benchmarks/profile_session.py [--variants NAME ...] [--seconds S]

Each variant (default: raw asyncpg, the equal-work read by hand, dualcore's read-only session and
its read connection) reads rows by primary key in a loop, one task, while `py-spy record --idle`
samples this process (needs `py-spy`; sampling a process needs ptrace rights, e.g. root). Every
sample goes to the innermost frame that belongs to a known part, as in `profile_http.py`, so the
shares add up to 100%; waiting for the server's answer (the event loop idle in its poll) is a
part of its own. Reads per second are printed beside each variant; they are slowed by sampling,
so compare the shares, and take times from `bench_session.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bench_session
import profile_http
from _common import Dataset

WAITING = ("waiting for the server (loop idle in poll)", ("selectors.py", "epoll"))
SQLALCHEMY = [
    # SQLAlchemy split finer than in the HTTP profile: the reads differ mostly in here.
    ("SQLAlchemy ORM session", ("sqlalchemy/orm/session.py", "sqlalchemy/ext/asyncio/session.py")),
    ("SQLAlchemy ORM loading, query context", ("sqlalchemy/orm/",)),
    ("SQLAlchemy statement, cache key", ("sqlalchemy/sql/",)),
    ("SQLAlchemy engine, result", ("sqlalchemy/engine/", "sqlalchemy/ext/asyncio/engine.py")),
    ("SQLAlchemy asyncpg dialect", ("sqlalchemy/dialects/", "sqlalchemy/connectors/")),
    ("SQLAlchemy greenlet bridge", ("sqlalchemy/util/concurrency", "sqlalchemy/util/_concurrency")),
]
PARTS = [WAITING, *SQLALCHEMY, *profile_http.PARTS]
DEFAULT = ["asyncpg", "hand ro (equal work)", "dualcore read-only", "dualcore read connection"]


async def profile(variants: list[str], seconds: float, out: Path) -> None:
    ds = Dataset()
    await ds.create()
    try:
        ops, resources = await bench_session.build(ds)
        try:
            for name in variants:
                op = ops[name]
                for _ in range(500):  # connections open, statements prepared
                    await op()
                collapsed = out / f"{name.replace(' ', '-')}.txt"
                spy = subprocess.Popen(  # noqa: ASYNC220 - returns at once; nothing awaits it
                    [
                        "py-spy", "record", "--pid", str(os.getpid()), "--format", "raw",
                        "--rate", "500", "--idle", "--nonblocking",
                        "--duration", str(int(seconds)), "--output", str(collapsed),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                # Read for as long as py-spy samples, so that every sample is of a read.
                reads, started = 0, time.perf_counter()
                while spy.poll() is None:
                    await op()
                    reads += 1
                rate = reads / (time.perf_counter() - started)
                print(f"\n{name}: {rate:.0f} reads/s under sampling")
                for part, share in profile_http.summarise(collapsed, PARTS).items():
                    print(f"  {part:44} {share:6.1%}")
                print(f"  (collapsed stacks: {collapsed})")
        finally:
            await bench_session.close(resources)
    finally:
        await ds.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variants", nargs="+", default=DEFAULT)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found (pip install py-spy)")
    out = args.out or Path(tempfile.mkdtemp(prefix="dualcore-flame-"))
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(profile(args.variants, args.seconds, out))


if __name__ == "__main__":
    main()
