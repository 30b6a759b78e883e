"""The failed-work inbox for admins under /admin/api/monitoring/failed-work: list, inspect, retry, discard.

Dead jobs, failed emails, stuck storage files and unapplied payments, each with its real error, age
and history (`monitoring.inbox`). The actions below are the ones `flask monitoring failed-work` runs
too (actor "cli:<os user>" there, "admin user <id>" here); each one is written to security.log with
the actor, the admin's id, the kind, the ids and (for a discard) the reason.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from flask_jwt_extended import current_user

from ...log.events import log_security_event
from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.validation import parse_json, parse_query
from ..errors import ValidationError
from ..monitoring.inbox import MAX_MERGED_DEPTH, Inbox
from ..timeutil import iso, utcnow
from .work_schemas import (
    FailedWorkActionOut,
    FailedWorkDiscardRequest,
    FailedWorkEnvelope,
    FailedWorkPage,
    FailedWorkQuery,
    FailedWorkRetryAllRequest,
)

bp = Blueprint("failed_work", __name__, url_prefix="/admin/api/monitoring/failed-work")


def get_inbox() -> Inbox:
    """The current app's failed-work inbox."""
    return current_app.extensions["inbox"]  # type: ignore[no-any-return]


# -- the actions (the admin API and the CLI) ------------------------------------------------------------------


def list_items(kind: str | None = None, *, page: int = 1, per_page: int = 50) -> dict[str, Any]:
    """One page of the inbox (oldest failure first), with its size and oldest failure by kind."""
    inbox = get_inbox()
    if kind is not None and inbox.source(kind) is None:
        raise ValidationError(f"kind must be one of {', '.join(inbox.kinds)}", field="kind")
    if kind is None and page * per_page > MAX_MERGED_DEPTH:
        raise ValidationError(
            f"Without kind, page x per_page must be at most {MAX_MERGED_DEPTH}; give a kind to page further.",
            field="page",
        )
    items, total = inbox.page(kind, page=page, per_page=per_page)
    now = utcnow()
    return {
        "items": [item.summary(now) for item in items],
        "totals": inbox.counts(),
        "oldest": {k: iso(v) for k, v in inbox.oldest().items()},
        "total": total,
        "kind": kind,
        "page": page,
        "per_page": per_page,
    }


def show_item(kind: str, item_id: int) -> dict[str, Any]:
    """One item with its history and details (404 for an unknown kind or id)."""
    return {"item": get_inbox().get(kind, item_id).detail(utcnow())}


def retry_item(kind: str, item_id: int, *, actor: str, user_id: int | None = None) -> dict[str, Any]:
    """Put one item's work back where it came from (404/409 when it is not in the inbox); audited."""
    item = get_inbox().retry(kind, item_id, actor=actor)
    log_security_event(
        "failed_work_retried",
        f"Failed {kind} {item_id} retried by {actor}",
        user_id=user_id,
        actor=actor,
        kind=kind,
        item_ids=[item_id],
        title=item.title,
    )
    return {"message": f"Retried {item.title}.", "kind": kind, "ids": [item_id]}


def discard_item(kind: str, item_id: int, *, reason: str, actor: str, user_id: int | None = None) -> dict[str, Any]:
    """Give one item up with a reason (required, 1-500 characters); audited with the reason."""
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        raise ValidationError("Give a reason of 1 to 500 characters.", field="reason")
    item = get_inbox().discard(kind, item_id, reason=reason, actor=actor)
    log_security_event(
        "failed_work_discarded",
        f"Failed {kind} {item_id} discarded by {actor}",
        user_id=user_id,
        actor=actor,
        kind=kind,
        item_ids=[item_id],
        title=item.title,
        reason=reason,
    )
    return {"message": f"Discarded {item.title}.", "kind": kind, "ids": [item_id]}


def retry_kind(kind: str, *, limit: int, actor: str, user_id: int | None = None) -> dict[str, Any]:
    """Retry every item of one kind, oldest first, at most `limit` (1-1000); audited with the ids."""
    if not 1 <= limit <= 1000:
        raise ValidationError("limit must be between 1 and 1000", field="limit")
    ids = get_inbox().retry_all(kind, actor=actor, limit=limit)
    log_security_event(
        "failed_work_bulk_retried",
        f"{len(ids)} failed {kind} item(s) retried by {actor}",
        user_id=user_id,
        actor=actor,
        kind=kind,
        item_ids=ids,
        limit=limit,
    )
    return {"message": f"Retried {len(ids)} {kind} item(s).", "kind": kind, "ids": ids}


# -- the views -------------------------------------------------------------------------------------------------


def _actor() -> str:
    return f"admin user {current_user.id}"


@bp.get("")
@documented(
    "The failed-work inbox: dead jobs, failed emails, stuck files, unapplied payments (oldest first)",
    tag="monitoring",
    responses={200: FailedWorkPage},
    auth="admin",
    errors=(422,),
    query=(
        ("kind", "string", "Only this kind: job, email, storage or payment"),
        ("page", "integer", "Page number from 1"),
        ("per_page", "integer", "Items per page (1-100)"),
    ),
)
@admin_required
def list_view() -> dict[str, Any]:
    """One page of items with their real error, age and attempts; totals by kind."""
    query = parse_query(FailedWorkQuery)
    return list_items(query.kind, page=query.page, per_page=query.per_page)


@bp.get("/<kind>/<int:item_id>")
@documented(
    "Inspect one failed-work item", tag="monitoring", responses={200: FailedWorkEnvelope}, auth="admin", errors=(404,)
)
@admin_required
def show_view(kind: str, item_id: int) -> dict[str, Any]:
    """An item with its history (every failed attempt, every retry and discard) and its details."""
    return show_item(kind, item_id)


@bp.post("/<kind>/<int:item_id>/retry")
@documented(
    "Retry one failed-work item",
    tag="monitoring",
    responses={200: FailedWorkActionOut},
    auth="admin",
    errors=(404, 409),
)
@admin_required
def retry_view(kind: str, item_id: int) -> dict[str, Any]:
    """Put the work back where it came from: a job requeued, an email queued, a file pending."""
    return retry_item(kind, item_id, actor=_actor(), user_id=current_user.id)


@bp.post("/<kind>/<int:item_id>/discard")
@documented(
    "Discard one failed-work item, with a reason",
    tag="monitoring",
    request=FailedWorkDiscardRequest,
    responses={200: FailedWorkActionOut},
    auth="admin",
    errors=(404, 409, 422),
)
@admin_required
def discard_view(kind: str, item_id: int) -> dict[str, Any]:
    """Give the work up; the reason stays with the item until the retention purge."""
    body = parse_json(FailedWorkDiscardRequest)
    return discard_item(kind, item_id, reason=body.reason, actor=_actor(), user_id=current_user.id)


@bp.post("/<kind>/retry")
@documented(
    "Retry every failed-work item of one kind (oldest first, at most `limit`)",
    tag="monitoring",
    request=FailedWorkRetryAllRequest,
    responses={200: FailedWorkActionOut},
    auth="admin",
    errors=(404, 422),
)
@admin_required
def retry_kind_view(kind: str) -> dict[str, Any]:
    """After the cause is fixed (a key rotated, a bucket permission granted), retry the whole kind at once."""
    body = parse_json(FailedWorkRetryAllRequest)
    return retry_kind(kind, limit=body.limit, actor=_actor(), user_id=current_user.id)
