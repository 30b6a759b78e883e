"""A bare Flask app, the baseline of `bench/bench_error_stack.py`: `gunicorn bench.bare_app:app`.

Plain `Flask(__name__)` with Flask's default error handling and no extensions, no logging set-up,
no request hooks. Its routes answer like the full app's equivalents: `/healthz` the same small
JSON, `/api/me` a small 401 JSON (the full app: our error envelope), and any unknown path Flask's
default HTML 404 (the full app: our JSON envelope).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    """The same body as the full app's liveness probe."""
    return {"status": "alive"}


@app.get("/api/me")
def me() -> tuple[dict[str, Any], int]:
    """A 401 with a small JSON body, as a bare app guarding the route by hand would send."""
    return {"msg": "Missing Authorization Header"}, 401
