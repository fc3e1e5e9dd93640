"""The cheap per-request paths agree with the library code they stand in for.

`RecordTemplate` against `Logger.makeRecord`, and `HttpStats` against prometheus-client's own
`Counter`/`Histogram`/`Gauge` (`SharedHttpStats`), observation for observation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.observability.http_metrics import HttpStats, SharedHttpStats
from core.observability.log_record import RecordTemplate
from core.observability.metrics import DEFAULT_BUCKETS

# --- RecordTemplate ---------------------------------------------------------------------------

# Attributes that legitimately differ between two records made at different moments.
_PER_CALL = {"created", "msecs", "relativeCreated"}


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    lg = logging.getLogger("dualcore.test.records")
    yield lg
    lg.handlers.clear()


def _stock(logger: logging.Logger, msg: str, extra: dict[str, Any]) -> logging.LogRecord:
    return logger.makeRecord(logger.name, logging.INFO, "", 0, msg, (), None, extra=extra)


def test_template_records_match_make_record(logger: logging.Logger) -> None:
    template = RecordTemplate(logger, logging.INFO)
    before = time.time()
    made = template.make("line", {"fields": {"a": 1}})
    after = time.time()
    stock = _stock(logger, "line", {"fields": {"a": 1}})
    assert type(made) is logging.LogRecord
    assert made.__dict__.keys() == stock.__dict__.keys()
    assert {k: v for k, v in made.__dict__.items() if k not in _PER_CALL} == {
        k: v for k, v in stock.__dict__.items() if k not in _PER_CALL
    }
    assert before - 0.001 <= made.created <= after + 0.001
    assert made.msecs == int((made.created - int(made.created)) * 1000) or made.msecs == 0.0
    assert abs(made.relativeCreated - stock.relativeCreated) < 1000
    assert made.getMessage() == "line"
    assert logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(made)


def test_template_records_follow_the_calling_thread(logger: logging.Logger) -> None:
    template = RecordTemplate(logger, logging.INFO)
    seen: list[logging.LogRecord] = []
    worker = threading.Thread(target=lambda: seen.append(template.make("x", {})), name="w-1")
    worker.start()
    worker.join()
    assert seen[0].threadName == "w-1"
    assert seen[0].thread == worker.ident
    assert seen[0].process == os.getpid()


def test_template_records_carry_a_forked_childs_own_pid(logger: logging.Logger) -> None:
    template = RecordTemplate(logger, logging.INFO)
    assert template.make("x", {}).process == os.getpid()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a threaded process
        pid = os.fork()
    if pid == 0:  # child: report what its record says and leave without any cleanup
        os.write(write, str(template.make("x", {}).process).encode("ascii"))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reported = pipe.read().decode("ascii")
    os.waitpid(pid, 0)
    assert reported == str(pid)


def test_template_records_respect_logging_switches(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = RecordTemplate(logger, logging.INFO)
    monkeypatch.setattr(logging, "logThreads", False)
    monkeypatch.setattr(logging, "logProcesses", False)
    monkeypatch.setattr(logging, "logMultiprocessing", False)
    made = template.make("x", {})
    stock = _stock(logger, "x", {})
    for name in ("thread", "threadName", "process", "processName"):
        assert getattr(made, name) is None
        assert getattr(stock, name) is None


def test_template_records_carry_the_asyncio_task_name(logger: logging.Logger) -> None:
    template = RecordTemplate(logger, logging.INFO)

    def task_name(record: logging.LogRecord) -> object:
        return getattr(record, "taskName", "absent")

    async def main() -> tuple[object, object]:
        async def inner() -> tuple[object, object]:
            return task_name(template.make("x", {})), task_name(_stock(logger, "x", {}))

        return await asyncio.create_task(inner(), name="request-7")

    made, stock = asyncio.run(main())
    assert made == stock
    assert made == ("request-7" if hasattr(logging, "logAsyncioTasks") else "absent")
    outside = task_name(template.make("x", {}))  # no running loop
    assert outside == (None if hasattr(logging, "logAsyncioTasks") else "absent")


def test_custom_record_factory_is_honoured(logger: logging.Logger) -> None:
    template = RecordTemplate(logger, logging.INFO)
    stock_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = stock_factory(*args, **kwargs)
        record.tenant = "acme"
        return record

    logging.setLogRecordFactory(factory)
    try:
        made = template.make("x", {"fields": {}})
    finally:
        logging.setLogRecordFactory(stock_factory)
    assert made.tenant == "acme"  # type: ignore[attr-defined]
    assert made.fields == {}  # type: ignore[attr-defined]


def test_custom_logger_class_is_honoured() -> None:
    class TaggingLogger(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = super().makeRecord(*args, **kwargs)
            record.tagged = True
            return record

    lg = TaggingLogger("dualcore.test.tagging")
    made = RecordTemplate(lg, logging.WARNING).make("x", {})
    assert made.tagged is True  # type: ignore[attr-defined]
    assert made.levelname == "WARNING"


# --- HttpStats --------------------------------------------------------------------------------

_observation = st.tuples(
    st.sampled_from(["GET", "POST", "BREW"]),
    st.sampled_from(["/users/{id}", "/health", "<unmatched>"]),
    st.sampled_from([200, 201, 404, 500]),
    st.one_of(
        st.floats(min_value=0, max_value=20, allow_nan=False),
        st.sampled_from(list(DEFAULT_BUCKETS)),  # exactly on a bucket's upper bound
    ),
)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(observations=st.lists(_observation, max_size=300), open_requests=st.integers(0, 3))
def test_http_stats_expose_what_prometheus_client_would(
    observations: list[tuple[str, str, int, float]], open_requests: int
) -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = HttpStats(buckets=DEFAULT_BUCKETS)
    ours_registry.register(ours)
    theirs = SharedHttpStats(theirs_registry, buckets=DEFAULT_BUCKETS)
    for stats in (ours, theirs):
        for _ in range(open_requests):
            stats.started()
        for method, route, status, duration in observations:
            stats.started()
            stats.finished(method, route, status, duration)
    got, expected = _samples(ours_registry), _samples(theirs_registry)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_http_stats_lose_no_request_to_concurrent_threads_and_scrapes() -> None:
    registry = CollectorRegistry()
    stats = HttpStats(buckets=DEFAULT_BUCKETS)
    registry.register(stats)
    threads, per_thread = 8, 5000
    done = threading.Event()

    def serve(i: int) -> None:
        for n in range(per_thread):
            stats.started()
            stats.finished("GET", f"/r{i % 2}", 200, n % 7 / 10)

    def scrape() -> int:
        scrapes = 0
        while not done.is_set():
            generate_latest(registry)
            scrapes += 1
        return scrapes

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to hit every window
    try:
        with ThreadPoolExecutor(threads + 1) as pool:
            scraper = pool.submit(scrape)
            list(pool.map(serve, range(threads)))
            done.set()
            assert scraper.result() > 0
    finally:
        sys.setswitchinterval(interval)
    samples = _samples(registry)
    total = sum(v for (name, _), v in samples.items() if name == "http_requests_total")
    counts = sum(v for (name, _), v in samples.items() if name.endswith("_seconds_count"))
    assert total == counts == threads * per_thread
    assert samples[("http_requests_in_progress", ())] == 0.0


def test_http_stats_namespace_and_custom_buckets() -> None:
    registry = CollectorRegistry()
    stats = HttpStats("svc_", buckets=(1.0, 0.1))
    registry.register(stats)
    stats.started()
    stats.finished("GET", "/x", 200, 0.1)
    samples = _samples(registry)
    labels = (("le", "0.1"), ("method", "GET"), ("route", "/x"))
    assert samples[("svc_http_request_duration_seconds_bucket", labels)] == 1.0
    assert (
        samples[
            ("svc_http_requests_total", (("method", "GET"), ("route", "/x"), ("status", "200")))
        ]
        == 1.0
    )
    assert samples[("svc_http_requests_in_progress", ())] == 0.0
