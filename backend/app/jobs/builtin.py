"""Built-in kinds: the no-op (benchmarks, smoke checks) and the job system's own maintenance.

Other owners register their periodic work with one line each, in their own modules:
`register_periodic("storage.sync", 300, sync_pending_uploads)`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app

from .compensation import sweep_pending
from .context import JobContext
from .dead_letters import archive_expired, purge_succeeded
from .registry import job_kind, register_periodic

logger = logging.getLogger(__name__)

DEAD_LETTER_TTL_EVERY_SECONDS = 3600
COMPENSATION_SWEEP_EVERY_SECONDS = 60


@job_kind("maintenance.noop", queue="default", max_attempts=1)
def noop(ctx: JobContext) -> dict[str, Any]:
    """Do nothing but go through the full record keeping (claim, lease, complete)."""
    return {"job_id": ctx.job_id}


def dead_letter_ttl(ctx: JobContext) -> dict[str, Any]:
    """Archive dead letters past DEAD_LETTER_TTL_DAYS; drop succeeded records past their retention."""
    from . import runtime

    settings = runtime().settings
    archived = archive_expired(settings.dead_letter_ttl_days)
    purged = purge_succeeded(settings.succeeded_retention_days)
    if archived or purged:
        logger.info("Dead-letter TTL: %s archived, %s old succeeded jobs purged", archived, purged)
    return {"archived": archived, "purged_succeeded": purged, "ttl_days": settings.dead_letter_ttl_days}


def compensation_sweep(ctx: JobContext) -> dict[str, Any]:
    """Apply compensations left pending (a worker died right after a job ended, or one failed)."""
    applied = sweep_pending(limit=int(current_app.config.get("JOBS_COMPENSATION_SWEEP_LIMIT", 100)))
    return {"applied": applied}


register_periodic("maintenance.dead_letter_ttl", DEAD_LETTER_TTL_EVERY_SECONDS, dead_letter_ttl)
register_periodic("maintenance.compensations", COMPENSATION_SWEEP_EVERY_SECONDS, compensation_sweep)
