"""Serve one benchmark app with uvicorn (one worker) on loopback.

    python benchmarks/serve.py NAME PORT

NAME is one of `baseline_apps.APPS`. Settings come from the environment, as in production.
uvicorn's own access log is off for every app alike; dualcore's is off too (logging is left
unconfigured) unless `BENCH_ACCESS_LOG=devnull`, which writes it to /dev/null.
"""

from __future__ import annotations

import os
import sys

import uvicorn
from _common import quiet_access_log
from baseline_apps import APPS


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    app = APPS[name]()
    if os.environ.get("BENCH_ACCESS_LOG") == "devnull":
        quiet_access_log()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
