"""`flask jobs ...`: run a worker, enqueue a job, show queue depth and worker heartbeats."""

from __future__ import annotations

import json
import logging

import click
from flask import current_app
from flask.cli import AppGroup

logger = logging.getLogger(__name__)

KEY_MAX = 200  # jobs.idempotency_key


jobs_cli = AppGroup("jobs", help="Background jobs: workers, queue depth, enqueueing.")


@jobs_cli.command("worker")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=None, help="Jobs run at once (threads).")
@click.option("--queues", "-q", default=None, help="Comma-separated queues (default: all).")
@click.option("--burst", is_flag=True, help="Exit when no job is due.")
@click.option("--once", is_flag=True, help="Run at most one job, then exit.")
@click.option("--no-schedule", is_flag=True, help="Do not enqueue periodic jobs from this worker.")
def worker(concurrency: int | None, queues: str | None, burst: bool, once: bool, no_schedule: bool) -> None:
    """Run a worker until SIGTERM (graceful) or, with --burst/--once, until the work is done."""
    from .worker import Worker, options_from_app

    app_obj = current_app._get_current_object()  # type: ignore[attr-defined]
    options = options_from_app(
        app_obj,
        concurrency=concurrency,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        burst=burst or once,
        max_jobs=1 if once else None,
        schedule=not (no_schedule or burst or once),
    )
    processed = Worker(app_obj, options).run()
    click.echo(f"worker stopped after {processed} jobs")


@jobs_cli.command("enqueue")
@click.argument("kind")
@click.option("--payload", default="{}", help="JSON object.")
@click.option("--key", default=None, help="Idempotency key (one job per kind and key, at most 200 characters).")
def enqueue_command(kind: str, payload: str, key: str | None) -> None:
    """Enqueue one job of KIND."""
    from .records import UnknownJobKindError, enqueue
    from .registry import REGISTRY

    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from exc
    if not isinstance(body, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    if key is not None and not 1 <= len(key) <= KEY_MAX:  # the column's length
        raise click.BadParameter(f"must be 1 to {KEY_MAX} characters", param_hint="--key")
    try:
        job = enqueue(kind, body, idempotency_key=key)
    except UnknownJobKindError as exc:
        known = ", ".join(sorted(k.name for k in REGISTRY.kinds()))
        raise click.ClickException(
            f"Unknown job kind {kind!r} (known: {known}); modules that register more go in JOBS_IMPORTS."
        ) from exc
    click.echo(json.dumps({"id": job.id, "kind": job.kind, "status": job.status}))


@jobs_cli.command("status")
def status() -> None:
    """Print queue depth and worker heartbeats as JSON."""
    from . import queue_depth, worker_heartbeats

    click.echo(json.dumps({"queue": queue_depth(), "workers": worker_heartbeats()}, indent=2))
