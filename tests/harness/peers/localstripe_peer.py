"""localstripe (customers, payment intents, charges) in a subprocess bound to 127.0.0.1, with nothing on disk.

Run from its console script, localstripe binds every interface (`::`) and loads and saves
`/tmp/localstripe.pickle`, which leaks state between runs and between engineers. We start its aiohttp app
from Python instead, with an explicit host and its store's disk persistence switched off (SPEC section 10).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import requests

from tests.harness.peers._net import LOOPBACK, free_port, wait_for_port

logger = logging.getLogger(__name__)

# Any key starting with sk_ is accepted by localstripe; this one is only for readability.
LOCALSTRIPE_API_KEY = "sk_test_localstripe_0123456789"

_LAUNCHER = """
import sys
from aiohttp import web
from localstripe import resources, server

# In memory only: never read or write /tmp/localstripe.pickle.
resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None
web.run_app(server.app, host=sys.argv[1], port=int(sys.argv[2]), print=None, access_log=None)
"""


class LocalStripe:
    """A localstripe subprocess; `url` is its base URL, `reset()` empties its store."""

    api_key = LOCALSTRIPE_API_KEY

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, for `base_addresses={"api": url}`."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> LocalStripe:
        """Spawn the server and wait until it accepts connections (raises with its stderr if it died)."""
        self.port = free_port()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, LOOPBACK, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"localstripe exited with {self._process.returncode}: {stderr[-2000:]}")
            try:
                wait_for_port(self.port, timeout=0.2)
                return self
            except TimeoutError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise

    def reset(self) -> None:
        """Delete every object (localstripe's own `DELETE /_config/data`)."""
        requests.delete(f"{self.url}/_config/data", timeout=5).raise_for_status()

    def stop(self) -> None:
        """Terminate the subprocess (kill it if it lingers)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None
