"""Serve one benchmark app with uvicorn (one worker) on loopback.

    python benchmarks/serve.py NAME PORT

NAME is one of `baseline_apps.APPS`. Settings come from the environment, as in production.
uvicorn's own access log is off for every app alike.
"""

from __future__ import annotations

import sys

import uvicorn
from baseline_apps import APPS


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    app = APPS[name]()
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
