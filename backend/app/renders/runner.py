"""`run_render(render_id)`: the one function a background job calls to render a video.

It reads the upload from storage, renders it with FFmpeg in a temporary folder, stores the video
under `renders/<id>.mp4`, marks the render succeeded and emails the user. On failure it records
the real error on the render, gives the credit back (compensation) and emails the user why.

Safe to call again for the same render (a job retried after a crash, a duplicate delivery):
- a succeeded render is not rendered again; a failed one is not retried. Either way the call only
  completes what may be missing: the refund (once: a conditional flag written in the same
  transaction as the credit ledger row, which is itself unique per ref) and the email (once: the
  outbox is unique per dedup key);
- every run that claims the render bumps `attempts`; a run writes its outcome only while it is
  still the latest claim, so a run that was superseded (its worker's lease expired) changes nothing.

`run_render(..., final_attempt=False)` lets a job system with retries of its own keep a retryable
failure (resources busy, storage down, an open breaker) for its next attempt: the render goes back
to `queued` and the error is raised, with no refund and no email. The default records the failure.

Under a job (`run_render(id, job=ctx)`, the `render` job kind of `jobs.py`): the job's retry
policy decides whether a failure is retried (the render goes back to `queued`) or final (the
render is marked failed, settled, and the error raised so the job record keeps it); the stored
video is a job step, so an attempt after a crash does not render and upload it again; progress
checks the job's lease, so a worker that lost its lease stops FFmpeg instead of racing the next one.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from ...log.context import log_context
from ...log.redaction import redact_value
from ..errors import APIError, NotFoundError
from ..extensions import db
from ..jobs import JobContext, LeaseLostError, enqueue
from ..jobs.records import still_held
from ..models.media import FAILED, QUEUED, RUNNING, SUCCEEDED, Render, Upload
from ..models.user import User
from ..resilience.classifier import classify
from ..services import credits, get_email, get_storage
from ..services.audio import FORMATS
from ..services.rendering import RenderSpec, get_renderer
from ..timeutil import utcnow

logger = logging.getLogger(__name__)

JOB_KIND = "render"
UNEXPECTED_MESSAGE = "An unexpected error stopped the render."


@dataclass(frozen=True)
class _Work:
    """What one run needs, read before the render so no transaction stays open during it."""

    render_id: int
    attempt: int
    spec: RenderSpec
    upload_key: str | None
    upload_format: str
    duration_seconds: float
    job: JobContext | None = None  # the job attempt running this, whose lease fences every outcome


def queue_render(user_id: int, upload: Upload, spec: RenderSpec, *, request_id: str | None) -> Render:
    """Create a queued render, spend its credit and enqueue its job, in ONE transaction.

    402 `INSUFFICIENT_CREDITS` (or `CREDITS_IN_DEBT` while the user owes credits after a refund or
    dispute) leaves nothing behind; a crash anywhere before the commit leaves
    nothing either, so no render row can outlive an unspent credit or miss its job.
    """
    get_renderer().admit(spec, upload.duration_seconds, input_bytes=upload.size)
    render = Render(
        user_id=user_id,
        upload_id=upload.id,
        preset=spec.preset,
        resolution=spec.resolution,
        fps=spec.fps,
        status=QUEUED,
        progress=0,
        attempts=0,
        credit_refunded=False,
        request_id=request_id,
    )
    try:
        db.session.add(render)
        db.session.flush()  # the id names the credit ref and the job key; nothing is committed yet
        credits.consume_uncommitted(user_id, render.credit_ref)  # rolls everything back on either 402
        enqueue(
            JOB_KIND,
            {"render_id": render.id},
            idempotency_key=f"render-{render.id}",
            max_attempts=current_app.config.get("RENDER_JOB_MAX_ATTEMPTS"),  # None: the kind's policy
            commit=False,
            # Pending from the start: a job that ends failed or dead settles the render (refund, email).
            compensations=[("consume_credit", "settle_failed", {"render_id": render.id})],
            request_id=request_id,  # the id the user is shown with the render and its error
            user_id=user_id,
        )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return render


def run_render(render_id: int, *, final_attempt: bool = True, job: JobContext | None = None) -> None:
    """Render `render_id` (or finish what a previous run left undone); see the module docstring."""
    with log_context(render_id=render_id):
        render = db.session.get(Render, render_id)
        if render is None:
            logger.warning("Render %s does not exist; nothing to do", render_id)
            return
        if render.status in (SUCCEEDED, FAILED):
            logger.info("Render %s already %s; completing its side effects only", render_id, render.status)
            _settle(render_id)
            return
        work = _claim(render_id)
        if work is None:
            _settle(render_id)
            return
        work = replace(work, job=job)
        try:
            stored = job.step("store_video", lambda: _render_and_store(work, job)) if job else _render_and_store(work)
        except LeaseLostError:
            raise  # another worker owns the job now; this run leaves the render to it
        except APIError as exc:
            if _retry_later(exc, final_attempt, job):
                _requeue(work)
                raise
            _finish_failed(work, exc)
            if job is not None:
                raise  # the job record keeps the real error; the render is already settled
            return
        except Exception as exc:
            logger.exception("Render %s crashed", render_id)
            if _retry_later(exc, final_attempt, job):
                _requeue(work)
                raise
            # The user sees only that it was unexpected (as a 500 would say); the traceback is in errors.log.
            _finish_failed(work, APIError(UNEXPECTED_MESSAGE))
            raise
        _finish_succeeded(work, stored["key"], stored["size"], stored["location"], stored["degraded"])


def _retry_later(exc: Exception, final_attempt: bool, job: JobContext | None) -> bool:
    """Whether this failure will be retried: the job's policy decides, else the caller's `final_attempt`."""
    if job is not None:
        return job.will_retry(exc)
    return not final_attempt and classify(exc).retryable


def settle_failed(render_id: int, message: str, *, details: dict[str, Any] | None = None) -> None:
    """Mark a render that is still queued or running failed with `message`, then settle it (refund, email, once).

    The render job's compensation: a job that ended failed or dead without run_render reaching its
    own failure path (its last attempt was lost with its worker) still settles the render.
    """
    db.session.execute(
        update(Render)
        .where(Render.id == render_id, Render.status.in_((QUEUED, RUNNING)))
        .values(
            status=FAILED,
            finished_at=utcnow(),
            error_code=APIError.code,
            error_status=APIError.status_code,
            error_message=message,
            error_details=redact_value("details", dict(details or {})),
            error_recoverable=True,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    _settle(render_id)


def _claim(render_id: int) -> _Work | None:
    """Mark the render running and take the next attempt number; None when it is not queued or running."""
    now = utcnow()
    attempt = db.session.execute(
        update(Render)
        .where(Render.id == render_id, Render.status.in_((QUEUED, RUNNING)))
        .values(status=RUNNING, attempts=Render.attempts + 1, started_at=now, progress=0)
        .returning(Render.attempts)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if attempt is None:
        db.session.rollback()
        return None
    render = db.session.get(Render, render_id, populate_existing=True)
    assert render is not None  # the UPDATE above just matched it
    upload = db.session.get(Upload, render.upload_id)
    work = _Work(
        render_id,
        attempt,
        RenderSpec.parse(render.preset, render.resolution, render.fps),
        upload.storage_key if upload else None,  # None: deleted under the render; the run fails with 404
        upload.format if upload else "",
        upload.duration_seconds if upload else 0.0,
    )
    db.session.commit()  # no transaction stays open while FFmpeg runs for minutes
    logger.info(
        "Render %s attempt %s started (%s %s@%s)", render_id, attempt, render.preset, render.resolution, render.fps
    )
    return work


def _render_and_store(work: _Work, job: JobContext | None = None) -> dict[str, Any]:
    """Read the audio, render it, store the video; {key, size, location, degraded} (a job step's result)."""
    if work.upload_key is None:
        raise NotFoundError("The uploaded audio for this render no longer exists.")
    storage = get_storage()
    renderer = get_renderer()
    audio_format = FORMATS[work.upload_format]
    data = storage.read(work.upload_key)
    with tempfile.TemporaryDirectory(prefix=f"oriel-render-{work.render_id}-", dir=renderer.work_dir()) as folder:
        audio_path = Path(folder) / f"input.{audio_format.extension}"
        audio_path.write_bytes(data)
        output_path = Path(folder) / "output.mp4"
        renderer.render(
            audio_path,
            output_path,
            work.spec,
            duration_seconds=work.duration_seconds,
            demuxer=audio_format.demuxer,
            progress=_ProgressWriter(work.render_id, work.attempt, job),
        )
        video = output_path.read_bytes()
    if job is not None:
        job.check_lease()  # a superseded run must not overwrite the video the new owner may be storing
    stored = storage.save(f"renders/{work.render_id}.mp4", video, "video/mp4")
    return {"key": stored.key, "size": stored.size, "location": stored.location, "degraded": stored.degraded}


class _ProgressWriter:
    """Persists progress on the render row, at most once per interval unless it jumped far."""

    def __init__(self, render_id: int, attempt: int, job: JobContext | None = None) -> None:
        self.render_id = render_id
        self.attempt = attempt
        self.job = job
        self.interval = float(current_app.config.get("RENDER_PROGRESS_INTERVAL_SECONDS", 1.0))
        self.written = 0
        self.written_at = 0.0

    def __call__(self, percent: int) -> None:
        if self.job is not None:
            self.job.check_lease()  # raising here kills FFmpeg: the job's new owner renders it
        now = time.monotonic()
        if percent >= 100 or (now - self.written_at < self.interval and percent - self.written < 25):
            return  # 100 is written with the outcome; small steps wait for the interval
        try:
            db.session.execute(
                update(Render)
                .where(Render.id == self.render_id, Render.attempts == self.attempt, Render.status == RUNNING)
                .values(progress=percent)
                .execution_options(synchronize_session=False)
            )
            db.session.commit()
        except SQLAlchemyError as exc:
            # Progress is informative; a busy database must not fail the render. The outcome write will tell.
            db.session.rollback()
            logger.warning("Render %s progress not saved: %s", self.render_id, type(exc).__name__)
            return
        self.written, self.written_at = percent, now


def _fence(work: _Work) -> None:
    """In the current transaction, raise `LeaseLostError` unless this run's job still holds its lease.

    A worker starved past its lease may still be running when the reaper hands the job to another
    worker; if the render's own claim was not taken over yet, only the job's fence stops the stale
    run from failing (and refunding) a render the new owner is about to finish.
    """
    if work.job is not None and not still_held(db.session, work.job.claim):
        db.session.rollback()
        raise LeaseLostError(f"render {work.render_id} attempt {work.attempt}: job lease lost")


def _outcome(work: _Work, **values: Any) -> bool:
    """Write the outcome if this run still holds the latest claim (and its job's lease)."""
    _fence(work)
    written = db.session.execute(
        update(Render)
        .where(Render.id == work.render_id, Render.attempts == work.attempt, Render.status == RUNNING)
        .values(finished_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if not written:
        logger.warning("Render %s attempt %s was superseded; its outcome is dropped", work.render_id, work.attempt)
    return bool(written)


def _requeue(work: _Work) -> None:
    _fence(work)
    db.session.execute(
        update(Render)
        .where(Render.id == work.render_id, Render.attempts == work.attempt, Render.status == RUNNING)
        .values(status=QUEUED, progress=0)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    logger.info("Render %s attempt %s will be retried", work.render_id, work.attempt)


def _finish_succeeded(work: _Work, key: str, size: int, location: str, degraded: bool) -> None:
    if _outcome(
        work,
        status=SUCCEEDED,
        progress=100,
        video_key=key,
        video_size=size,
        video_location=location,
        video_degraded=degraded,
        error_code=None,
        error_status=None,
        error_message=None,
        error_details=None,
        error_recoverable=None,
    ):
        logger.info(
            "Render %s succeeded (%s bytes, %s%s)", work.render_id, size, location, ", degraded" if degraded else ""
        )
        _settle(work.render_id)


def _finish_failed(work: _Work, exc: APIError) -> None:
    if _outcome(
        work,
        status=FAILED,
        error_code=exc.code,
        error_status=exc.status_code,
        error_message=exc.message,
        error_details=redact_value("details", dict(exc.details)),
        error_recoverable=bool(exc.recoverable),
    ):
        logger.warning("Render %s failed: %s %s", work.render_id, exc.code, exc.message)
        _settle(work.render_id)


def _settle(render_id: int) -> None:
    """Complete a finished render's side effects: refund a failed one's credit, email the user (each once)."""
    render = db.session.get(Render, render_id, populate_existing=True)
    if render is None or render.status not in (SUCCEEDED, FAILED):
        return
    if render.status == FAILED:
        _refund_once(render)
    user = db.session.get(User, render.user_id)
    if user is None:
        return
    try:
        _notify(render, user.email)
    except APIError as exc:
        # The render's state is right either way; the email service keeps its own outbox for retries.
        logger.error("Render %s: the %s email could not be queued: %s", render_id, render.status, exc.code)


def _refund_once(render: Render) -> None:
    """Give the credit back, once, in the same transaction as the ledger row."""
    claimed = db.session.execute(
        update(Render)
        .where(Render.id == render.id, Render.status == FAILED, Render.credit_refunded.is_(False))
        .values(credit_refunded=True)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not claimed:
        db.session.rollback()
        return
    if credits.refund(render.user_id, render.credit_ref):  # commits the flag together with the ledger row
        logger.info("Render %s: credit refunded", render.id)
        return
    # No consumption under this ref, or a refund already in the ledger: the flag records that nothing is owed.
    db.session.execute(
        update(Render)
        .where(Render.id == render.id)
        .values(credit_refunded=True)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    logger.warning("Render %s: no credit to refund under %s", render.id, render.credit_ref)


def _what_to_do(code: str, recoverable: bool) -> str:
    refunded = "Your render credit has been refunded."
    if code == "RENDERING_TIMEOUT":
        return f"Try a shorter clip, a lower resolution or a lower frame rate. {refunded}"
    if recoverable:
        return f"This was a temporary problem on our side: start the render again in a few minutes. {refunded}"
    return f"Check that the audio plays correctly, upload it again and start a new render. {refunded}"


def _notify(render: Render, to: str) -> None:
    email = get_email()
    if render.status == SUCCEEDED and render.video_key:
        expires = int(current_app.config.get("RENDER_EMAIL_LINK_SECONDS", 24 * 3600))
        url = get_storage().download_url(render.video_key, expires_in=expires)
        email.send_render_finished(to, render_id=render.id, download_url=url)
    elif render.status == FAILED:
        reason = render.error_message or UNEXPECTED_MESSAGE
        what = _what_to_do(render.error_code or "", bool(render.error_recoverable))
        email.send_render_failed(to, render_id=render.id, reason=reason, what_to_do=what)
