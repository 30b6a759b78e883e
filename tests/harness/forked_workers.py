"""Job worker processes forked from one pre-imported parent, for the SIGKILL crash tests.

A forked worker is a full worker process (its own pid, connections and threads), but it starts in
milliseconds instead of the seconds an app import costs, so killing twenty of them stays cheap on a
busy machine. The module named at start must handle the `{"zygote": true}` spec in its `__main__`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Zygote:
    """A process that imports the app once, then forks workers on demand (prefork, like gunicorn)."""

    def __init__(self, module: str, settings: dict[str, Any]) -> None:
        spec = json.dumps({"settings": settings, "zygote": True})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, spec],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def spawn(self, **options: Any) -> int:
        """Fork a worker with `options`; its pid."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(options) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        """Stop forking and exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(20)


def kill(pid: int) -> None:
    """SIGKILL a forked worker and wait until it is gone (the zygote reaps it)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} survived SIGKILL")
