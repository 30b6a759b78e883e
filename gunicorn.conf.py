"""gunicorn settings read from the project root (`gunicorn wsgi:app`); command-line flags still win.

Only process hooks live here. With `PROMETHEUS_MULTIPROC_DIR` set, each worker writes its metrics
to files in that directory: the master empties it at start (stale files from an earlier run would
be summed in) and marks each worker dead when it exits, so gauges of dead workers are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def on_starting(server: Any) -> None:
    """Empty the metrics directory before the first worker starts."""
    folder = _multiproc_dir()
    if folder is None:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus-client a worker is gone (its live gauges stop counting)."""
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
