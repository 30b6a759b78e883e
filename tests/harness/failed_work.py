"""Failed work as the inbox sees it, made for real: failed emails, stuck files, a dead letter run by a worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask

from backend.app.errors import ValidationError
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import EmailOutbox, PendingSync
from backend.app.models.job import DEAD, Job
from backend.app.resilience.retry import RetryPolicy
from backend.app.services import get_storage

DEAD_LETTER_KIND = "test.dashboard_bad_data"  # the kind `dead_letter` registers


def failed_email(
    app: Flask, key: str, *, minutes_ago: float = 30, code: str = "UPSTREAM_REJECTED", attempts: int = 1
) -> int:
    """An outbox row in the state #13 point 4 leaves a permanent failure: `failed`, with its history."""
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    message = "SendGrid refused the request: The from address does not match a verified Sender Identity"
    with app.app_context():
        row = EmailOutbox(
            dedup_key=key,
            to_address="ada@example.com",
            subject="Your video is ready",
            text_body="Download it here",
            status="failed",
            attempts=attempts,
            last_error=f"{code}: {message}",
            created_at=at - timedelta(minutes=5),
            failed_at=at,
            possible_duplicates=1,
            errors=[
                {
                    "code": "EMAIL_UNAVAILABLE",
                    "kind": "transient",
                    "message": "timed out",
                    "time": "2026-12-01T10:00:00Z",
                },
                {"code": code, "kind": "permanent", "message": message, "time": "2026-12-01T10:05:00Z"},
            ],
        )
        db.session.add(row)
        db.session.commit()
        return int(row.id)


def failed_file(app: Flask, key: str, *, minutes_ago: float = 30, data: bytes = b"video-bytes") -> int:
    """A fallback file in the state #13 point 3 leaves one that used up its attempts: `failed`, kept locally."""
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    with app.app_context():
        path = get_storage().local_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        row = PendingSync(
            key=key,
            content_type="video/mp4",
            size=len(data),
            status="failed",
            attempts=5,
            last_error="UPSTREAM_REJECTED: 403 Forbidden: the service account lacks storage.objects.create",
            created_at=at - timedelta(minutes=10),
            failed_at=at,
            errors=[
                {
                    "code": "UPSTREAM_REJECTED",
                    "kind": "permanent",
                    "message": "403 Forbidden: the service account lacks storage.objects.create",
                    "time": "2026-12-01T10:00:00Z",
                }
            ],
        )
        db.session.add(row)
        db.session.commit()
        return int(row.id)


def dead_letter(app: Flask) -> int:
    """A real dead letter: a job whose handler rejects its data, run by a real worker, with no retry."""

    def handler(ctx: JobContext) -> None:
        raise ValidationError("Audio file has no samples", field="file")

    REGISTRY.register(JobKind(DEAD_LETTER_KIND, handler, policy=RetryPolicy(permanent_retries=0)), replace=True)
    with app.app_context():
        job_id = enqueue(DEAD_LETTER_KIND, {"upload": 1}).id
    options = WorkerOptions(
        install_signals=False,
        schedule=False,
        poll_seconds=0.02,
        heartbeat_seconds=0.1,
        lease_seconds=5.0,
        burst=True,
        max_seconds=10.0,
    )
    Worker(app, options).run()
    with app.app_context():
        assert db.session.get(Job, job_id).status == DEAD
    return job_id
