"""The full app with rate limits on, in memory: `gunicorn bench.ours_rate_limited:app` (bench_error_stack).

The same `create_app` as `wsgi.py` with `RATELIMIT_ENABLED` and a default limit so high that no
benchmark reaches it: every request to `/bench/ping` is keyed and counted in memory (`oriel-memory://`) and never
rejected (the load balancer's probes are never limited, so the limited 200 needs a route of its own,
which `bench/bare_app.py` answers too). The benchmark runs it without `REDIS_URL`.
"""

from __future__ import annotations

from typing import Any

from backend.app import create_app
from config import load_config

#: A limit no benchmark run reaches (wrk sends well under a million requests a minute here).
HIGH_LIMIT = "100000000 per minute"

app = create_app(load_config(), RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT=HIGH_LIMIT)


def ping() -> dict[str, Any]:
    """A trivial 200 like /healthz, but counted by the default limit (/healthz and /readyz never are)."""
    return {"status": "alive"}


app.add_url_rule("/bench/ping", "bench_ping", ping)
