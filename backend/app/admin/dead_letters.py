"""Dead-letter admin API under /admin/api/monitoring/dead-letters: list, inspect, requeue, archive.

Every action is written to security.log with the admin's id and the jobs it touched.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint
from flask_jwt_extended import current_user

from ...log.events import log_security_event
from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.validation import parse_json, parse_query
from ..errors import NotFoundError, ValidationError
from ..jobs.dead_letters import (
    DeadLetterFilter,
    archive,
    detail,
    get_dead_letter,
    list_dead_letters,
    requeue,
    requeue_matching,
    summary,
)
from ..timeutil import as_utc
from .work_schemas import (
    DeadLetterActionOut,
    DeadLetterEnvelope,
    DeadLetterPage,
    DeadLetterQuery,
    DeadLetterRequeueRequest,
)

bp = Blueprint("dead_letters", __name__, url_prefix="/admin/api/monitoring/dead-letters")


def _parse_since(raw: str | None) -> datetime | None:
    """The requeue body's `since` (an ISO-8601 time), or None."""
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError("since must be an ISO-8601 time", field="since") from exc
    return as_utc(parsed)


def _audit(event: str, message: str, job_ids: list[int], **fields: Any) -> None:
    log_security_event(event, message, user_id=current_user.id, job_ids=job_ids, **fields)


@bp.get("")
@documented(
    "List dead letters (newest first)",
    tag="monitoring",
    responses={200: DeadLetterPage},
    auth="admin",
    errors=(422,),
    query=(
        ("kind", "string", "Only this job kind"),
        ("analysis", "string", "transient, data_issue, system_issue or permanent"),
        ("since", "string", "ISO-8601: died at or after"),
        ("archived", "boolean", "List archived dead letters instead"),
        ("page", "integer", "Page number from 1"),
        ("per_page", "integer", "Items per page (1-100)"),
    ),
)
@admin_required
def list_view() -> dict[str, Any]:
    """One page of dead letters, filtered by kind, analysis and time of death."""
    query = parse_query(DeadLetterQuery)
    flt = DeadLetterFilter(kind=query.kind, analysis=query.analysis, since=query.since, archived=query.archived)
    items, total = list_dead_letters(flt, page=query.page, per_page=query.per_page)
    return {"items": [summary(job) for job in items], "total": total, "page": query.page, "per_page": query.per_page}


@bp.get("/<int:job_id>")
@documented("Inspect a dead letter", tag="monitoring", responses={200: DeadLetterEnvelope}, auth="admin", errors=(404,))
@admin_required
def inspect_view(job_id: int) -> dict[str, Any]:
    """A dead letter with its payload, error history, steps and compensations."""
    job = get_dead_letter(job_id)
    if job is None:
        raise NotFoundError(f"No dead letter with id {job_id}.")
    return {"dead_letter": detail(job)}


@bp.post("/<int:job_id>/requeue")
@documented(
    "Requeue one dead letter", tag="monitoring", responses={200: DeadLetterActionOut}, auth="admin", errors=(404,)
)
@admin_required
def requeue_view(job_id: int) -> dict[str, Any]:
    """Put one dead letter back in its queue with fresh attempts."""
    if get_dead_letter(job_id) is None or not requeue(job_id, actor=f"admin user {current_user.id}"):
        raise NotFoundError(f"No dead letter with id {job_id}.")
    _audit("dead_letter_requeued", "Admin requeued a dead letter", [job_id])
    return {"message": "Requeued 1 dead letter.", "job_ids": [job_id]}


@bp.post("/requeue")
@documented(
    "Requeue the dead letters matching a filter",
    tag="monitoring",
    request=DeadLetterRequeueRequest,
    responses={200: DeadLetterActionOut},
    auth="admin",
)
@admin_required
def requeue_matching_view() -> dict[str, Any]:
    """Requeue every unarchived dead letter matching kind/analysis/since (at least one filter)."""
    body = parse_json(DeadLetterRequeueRequest)
    if not (body.kind or body.analysis or body.since):
        raise ValidationError("Give at least one filter: kind, analysis or since.", field="kind")
    flt = DeadLetterFilter(kind=body.kind, analysis=body.analysis, since=_parse_since(body.since))
    ids = requeue_matching(flt, actor=f"admin user {current_user.id}", limit=body.limit)
    _audit(
        "dead_letters_requeued",
        "Admin requeued dead letters by filter",
        ids,
        filter={"kind": body.kind, "analysis": body.analysis, "since": body.since},
    )
    return {"message": f"Requeued {len(ids)} dead letters.", "job_ids": ids}


@bp.post("/<int:job_id>/archive")
@documented(
    "Archive one dead letter", tag="monitoring", responses={200: DeadLetterActionOut}, auth="admin", errors=(404,)
)
@admin_required
def archive_view(job_id: int) -> dict[str, Any]:
    """Archive a dead letter now (it stays on record, out of the default list)."""
    if not archive(job_id):
        raise NotFoundError(f"No unarchived dead letter with id {job_id}.")
    _audit("dead_letter_archived", "Admin archived a dead letter", [job_id])
    return {"message": "Archived 1 dead letter.", "job_ids": [job_id]}
