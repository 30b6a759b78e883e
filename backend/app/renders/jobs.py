"""The `render` job kind: runs `run_render` under the durable job engine, one job per render.

`POST /api/renders` records the render, spends its credit and enqueues this job in one
transaction (`runner.queue_render`), with the compensation `settle_failed` pending from the start.
What is exactly-once, and by what:
- the credit: spent by the request's transaction, never by the job;
- the video: the `store_video` job step (a completed upload is not redone; the object name is the
  render id, so a re-run after a crash between upload and ledger row overwrites the same object);
- the email: the outbox's dedup key `render-finished:<id>` / `render-failed:<id>`;
- the refund: ONE path, `runner._settle` → `_refund_once` (a conditional flag plus the ledger's
  unique ref). run_render reaches it when it records a final failure; the job's compensation
  reaches it when the job ends failed or dead some other way (its last attempt lost with its
  worker). Both calls are safe to repeat, so the compensation is also the backstop.

Retries follow the job policy by class (SPEC section 6): transient failures (storage down, an open
breaker, resources busy) back off up to `max_attempts`; a permanent one (FFmpeg rejects the input)
gets at most one retry; throttled ones wait their Retry-After.
"""

from __future__ import annotations

import logging
from typing import Any

from ..extensions import db
from ..jobs import JobContext, job_kind
from ..jobs.compensation import CompensationContext
from ..models.job import Job
from .runner import JOB_KIND, run_render, settle_failed

logger = logging.getLogger(__name__)

QUEUE = "renders"
LOST_MESSAGE = "The render could not finish: the worker running it stopped before it was done."


@job_kind(JOB_KIND, queue=QUEUE, max_attempts=5, base_delay=5.0, max_delay=300.0)
def render_job(ctx: JobContext) -> dict[str, Any]:
    """Render the payload's render (or complete what an earlier attempt left undone)."""
    render_id = int(ctx.payload["render_id"])
    run_render(render_id, final_attempt=ctx.final_attempt, job=ctx)
    return {"render_id": render_id}


@render_job.compensation("settle_failed")
def settle_failed_render(ctx: CompensationContext, args: dict[str, Any]) -> None:
    """The job ended failed or dead: make sure the render is failed, its credit refunded and the user told."""
    job = db.session.get(Job, ctx.job_id)
    code = job.last_error_code if job is not None else None
    message = LOST_MESSAGE if code in (None, "WORKER_LOST") else "The render failed and was not retried."
    settle_failed(int(args["render_id"]), message, details={"job_id": ctx.job_id, "last_error_code": code})
