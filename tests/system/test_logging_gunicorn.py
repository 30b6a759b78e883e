"""Under real gunicorn with --preload (app built in the master, workers forked) every request is logged."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from bench.harness import base_env, gunicorn, migrate


@pytest.mark.slow
def test_preloaded_gunicorn_workers_write_every_request_line(tmp_path: Path) -> None:
    if shutil.which("gunicorn") is None and not (Path(__file__).parents[2] / ".venv/bin/gunicorn").exists():
        pytest.skip("gunicorn is not installed")
    env = base_env(tmp_path, {"LOG_LEVEL": "INFO"})
    migrate(env)
    with gunicorn(env, workers=2, threads=2, preload=True) as server:
        master_pid = server.process.pid
        for n in range(40):
            with urllib.request.urlopen(server.url(f"/api/errors/catalog?n={n}"), timeout=5) as response:
                assert response.status == 200
    # gunicorn has stopped: workers flushed their queues on the way out.
    lines = [json.loads(x) for x in (Path(env["LOG_DIR"]) / "performance.log").read_text().splitlines()]
    numbered = [r for r in lines if r["metric"] == "request" and (r.get("query") or "").startswith("n=")]
    assert sorted(int(r["query"][2:]) for r in numbered) == list(range(40))
    assert master_pid not in {r["pid"] for r in numbered}  # written by the forked workers themselves
