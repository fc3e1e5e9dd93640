"""LogRecords for a fixed call site (one logger, one level), made by copying a prepared record."""

from __future__ import annotations

import logging
import os
import sys
import threading
from time import time_ns
from typing import Any

__all__ = ["RecordTemplate"]

_LogRecord = logging.LogRecord
_new = object.__new__
_get_ident = threading.get_ident
_current_thread = threading.current_thread
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    # The pid changes only across fork; reading it per record would be a system call each.
    os.register_at_fork(after_in_child=_refresh_pid)


class RecordTemplate:
    """Makes the records `logger.makeRecord` would make for one message at `level`, cheaper.

    A stock `logging.LogRecord` is built once; each call copies its attributes and refreshes
    the ones that differ per call (time, thread, process, asyncio task) under logging's
    `logThreads`, `logProcesses`, `logMultiprocessing` and `logAsyncioTasks` switches. The
    record has no source location, as for a record made with `makeRecord(..., "", 0, ...)`.

    An app that installs its own record factory (`logging.setLogRecordFactory`) or a logger
    class overriding `makeRecord` gets records from `logger.makeRecord`, exactly as before.
    """

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level
        self._stock_logger = type(logger).makeRecord is logging.Logger.makeRecord
        proto = _LogRecord(logger.name, level, "", 0, "", (), None)
        self._base = dict(proto.__dict__)
        # logging's own start time, without reading its private module attribute.
        self._start = proto.created - proto.relativeCreated / 1000.0
        self._tasks = "taskName" in self._base

    def make(self, msg: str, extra: dict[str, Any]) -> logging.LogRecord:
        """A record of `msg` (no arguments), with `extra` set as attributes."""
        if not self._stock_logger or logging.getLogRecordFactory() is not _LogRecord:
            logger = self.logger
            return logger.makeRecord(logger.name, self.level, "", 0, msg, (), None, extra=extra)
        # A copy of the prepared attributes already has room for all of them; filling an empty
        # instance dict instead would grow its table several times per record.
        attrs = self._base.copy()
        now = time_ns()
        created = now / 1e9
        attrs["created"] = created
        msecs = (now % 1_000_000_000) // 1_000_000 + 0.0
        if msecs == 999.0 and int(created) != now // 1_000_000_000:
            msecs = 0.0  # `created` rounded up into the next second
        attrs["msecs"] = msecs
        attrs["relativeCreated"] = (created - self._start) * 1000.0
        if logging.logThreads:
            attrs["thread"] = _get_ident()
            attrs["threadName"] = _current_thread().name
        else:
            attrs["thread"] = attrs["threadName"] = None
        attrs["process"] = _pid if logging.logProcesses else None
        attrs["processName"] = _process_name() if logging.logMultiprocessing else None
        if self._tasks:
            attrs["taskName"] = _task_name() if getattr(logging, "logAsyncioTasks", False) else None
        attrs["msg"] = msg
        attrs.update(extra)
        record: logging.LogRecord = _new(_LogRecord)
        record.__dict__ = attrs
        return record


def _process_name() -> str:
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        # As logging does: a half-initialised multiprocessing must not break a log call.
        try:
            return str(mp.current_process().name)
        except Exception:
            pass
    return "MainProcess"


def _task_name() -> str | None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop
        return None
    return task.get_name() if task is not None else None
