"""A bare Flask app, the baseline of `bench/bench_error_stack.py`: `gunicorn bench.bare_app:app`.

Plain `Flask(__name__)` with Flask's default error handling and no extensions, no logging set-up,
no request hooks. Its routes answer like the full app's equivalents: `/healthz` the same small
JSON, `/api/me` a small 401 JSON (the full app: our error envelope), and any unknown path a small
JSON 404 from a 404 handler (the full app: our JSON envelope), so the 404 compares JSON with JSON
rather than our envelope with Flask's HTML page.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.exceptions import NotFound

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    """The same body as the full app's liveness probe."""
    return {"status": "alive"}


@app.get("/bench/ping")
def ping() -> dict[str, Any]:
    """The same small 200 as /healthz, on a path the rate-limited full app counts (its probes are exempt)."""
    return {"status": "alive"}


@app.get("/api/me")
def me() -> tuple[dict[str, Any], int]:
    """A 401 with a small JSON body, as a bare app guarding the route by hand would send."""
    return {"msg": "Missing Authorization Header"}, 401


@app.errorhandler(404)
def not_found(_error: NotFound) -> tuple[dict[str, Any], int]:
    """A small JSON 404, as a bare JSON API would answer an unknown path."""
    return {"error": {"code": "NOT_FOUND", "message": "The requested URL was not found on this server."}}, 404
