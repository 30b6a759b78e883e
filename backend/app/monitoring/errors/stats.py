"""Read error statistics from the groups and the rollups (never by counting raw events).

Each query touches a bounded number of rows however long the history is: the groups (one row per
distinct error), at most 1,440 per-minute rows for rates, at most 24 rows per group for the top
groups and at most 24 rows per code for per-code counts. Event listings read `error_events` through
an index with keyset pagination.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from ...models import ErrorCodeHour, ErrorEvent, ErrorGroup, ErrorGroupHour, ErrorMinute
from ...timeutil import iso_micro, utcnow
from .store import CLIENT_SOURCE, floor_hour, floor_minute

#: Rate windows in minutes, each ending with (and including) the current minute.
WINDOWS = {"1m": 1, "5m": 5, "1h": 60, "24h": 1440}
GROUP_STATUSES = ("unresolved", "acknowledged", "resolved")


def group_dict(group: ErrorGroup, count_24h: int | None = None) -> dict[str, Any]:
    """The admin view of a group."""
    return {
        "id": group.id,
        "fingerprint": group.fingerprint,
        "source": group.source,
        "code": group.code,
        "title": group.title,
        "exc_type": group.exc_type,
        "endpoint": group.endpoint,
        "frames": group.frames.splitlines() if group.frames else [],
        "category": group.category,
        "severity": group.severity,
        "status_code": group.status_code,
        "count": group.count,
        "count_24h": count_24h,
        "first_seen": iso_micro(group.first_seen),
        "last_seen": iso_micro(group.last_seen),
        "status": group.status,
        "regressed": group.regressed,
    }


def event_dict(event: ErrorEvent) -> dict[str, Any]:
    """The admin view of one raw event."""
    return {
        "event_id": event.event_id,
        "group_id": event.group_id,
        "occurred_at": iso_micro(event.occurred_at),
        "source": event.source,
        "code": event.code,
        "status_code": event.status_code,
        "category": event.category,
        "severity": event.severity,
        "message": event.message,
        "exc_type": event.exc_type,
        "endpoint": event.endpoint,
        "method": event.method,
        "path": event.path,
        "request_id": event.request_id,
        "user_id": event.user_id,
    }


#: Server errors only: a client report is stored beside them but never counted as one.
SERVER_GROUPS = ErrorGroup.source != CLIENT_SOURCE
CLIENT_GROUPS = ErrorGroup.source == CLIENT_SOURCE


def _group_breakdown(session: Session) -> dict[str, Any]:
    rows = session.execute(
        select(
            ErrorGroup.code,
            ErrorGroup.category,
            ErrorGroup.severity,
            ErrorGroup.status,
            ErrorGroup.regressed,
            func.sum(ErrorGroup.count),
            func.count(),
        )
        .where(SERVER_GROUPS)
        .group_by(ErrorGroup.code, ErrorGroup.category, ErrorGroup.severity, ErrorGroup.status, ErrorGroup.regressed)
    ).all()
    totals = {"errors": 0, "groups": 0, "regressed": 0, **{status: 0 for status in GROUP_STATUSES}}
    by_code: dict[str, int] = defaultdict(int)
    by_category: dict[str, int] = defaultdict(int)
    by_severity: dict[str, int] = defaultdict(int)
    for code, category, severity, status, regressed, events, groups in rows:
        events = int(events or 0)
        totals["errors"] += events
        totals["groups"] += groups
        totals[status] = totals.get(status, 0) + groups
        totals["regressed"] += groups if regressed else 0
        by_code[code] += events
        by_category[category] += events
        by_severity[severity] += events
    return {"totals": totals, "by_code": by_code, "by_category": by_category, "by_severity": by_severity}


def _rates(session: Session, now: datetime) -> dict[str, dict[str, Any]]:
    current = floor_minute(now)
    starts = {name: current - timedelta(minutes=minutes - 1) for name, minutes in WINDOWS.items()}
    # One pass over at most 1,440 rows, every window summed in the database.
    columns = []
    for name in WINDOWS:
        inside = ErrorMinute.minute >= starts[name]
        for column in (ErrorMinute.errors, ErrorMinute.server_errors, ErrorMinute.requests):
            columns.append(func.coalesce(func.sum(case((inside, column), else_=0)), 0))
    row = session.execute(select(*columns).where(ErrorMinute.minute >= min(starts.values()))).one()
    rates: dict[str, dict[str, Any]] = {}
    for i, (name, minutes) in enumerate(WINDOWS.items()):
        errors, server, requests = (int(value) for value in row[3 * i : 3 * i + 3])
        rates[name] = {
            "minutes": minutes,
            "errors": errors,
            "requests": requests,
            "errors_per_minute": round(errors / minutes, 4),
            "error_ratio": _ratio(errors, requests),
            # An hour of ordinary 404s, 422s and expired tokens is not an outage: the two kinds apart.
            "server_errors": server,
            "server_error_ratio": _ratio(server, requests),
            "client_errors": errors - server,
            "client_error_ratio": _ratio(errors - server, requests),
        }
    return rates


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _codes_24h(session: Session, now: datetime) -> dict[str, int]:
    # Hour buckets, like the top groups: the current hour and the 23 before it.
    since = floor_hour(now) - timedelta(hours=23)
    rows = session.execute(
        select(ErrorCodeHour.code, func.sum(ErrorCodeHour.count))
        .where(ErrorCodeHour.hour >= since)
        .group_by(ErrorCodeHour.code)
    ).all()
    return {code: int(n or 0) for code, n in rows}


def _top_groups(session: Session, now: datetime, limit: int, *, client: bool = False) -> list[dict[str, Any]]:
    since = floor_hour(now) - timedelta(hours=23)
    total = func.sum(ErrorGroupHour.count).label("n")
    ranked = session.execute(
        select(ErrorGroupHour.group_id, total)
        .join(ErrorGroup, ErrorGroup.id == ErrorGroupHour.group_id)
        .where(ErrorGroupHour.hour >= since, CLIENT_GROUPS if client else SERVER_GROUPS)
        .group_by(ErrorGroupHour.group_id)
        .order_by(total.desc(), ErrorGroupHour.group_id)
        .limit(limit)
    ).all()
    counts = {gid: int(n) for gid, n in ranked}
    groups = {g.id: g for g in session.scalars(select(ErrorGroup).where(ErrorGroup.id.in_(counts)))}
    return [group_dict(groups[gid], counts[gid]) for gid in counts if gid in groups]


def _client_reports(session: Session, now: datetime, top: int) -> dict[str, Any]:
    """What browsers reported: its own totals and top groups, never part of the server's figures."""
    rows = session.execute(
        select(ErrorGroup.code, func.sum(ErrorGroup.count), func.count()).where(CLIENT_GROUPS).group_by(ErrorGroup.code)
    ).all()
    since = floor_hour(now) - timedelta(hours=23)
    last_24h = session.scalar(
        select(func.coalesce(func.sum(ErrorGroupHour.count), 0))
        .join(ErrorGroup, ErrorGroup.id == ErrorGroupHour.group_id)
        .where(ErrorGroupHour.hour >= since, CLIENT_GROUPS)
    )
    return {
        "reports": sum(int(n or 0) for _, n, _ in rows),
        "groups": sum(int(g) for _, _, g in rows),
        "last_24h": int(last_24h or 0),
        "by_code": {code: int(n or 0) for code, n, _ in sorted(rows)},
        "top_groups": _top_groups(session, now, top, client=True),
    }


def error_stats(session: Session, *, top: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Server totals, breakdowns, rates over 1m/5m/1h/24h and top groups; client reports in their own section."""
    now = now or utcnow()
    breakdown = _group_breakdown(session)
    codes_24h = _codes_24h(session, now)
    by_code = {
        code: {"total": total, "last_24h": codes_24h.get(code, 0)}
        for code, total in sorted(breakdown["by_code"].items())
    }
    return {
        "generated_at": iso_micro(now),
        "totals": breakdown["totals"],
        "by_code": by_code,
        "by_category": dict(sorted(breakdown["by_category"].items())),
        "by_severity": dict(sorted(breakdown["by_severity"].items())),
        "rates": _rates(session, now),
        "top_groups": _top_groups(session, now, top),
        "client_reports": _client_reports(session, now, top),
    }


def encode_cursor(event: ErrorEvent) -> str:
    """An opaque cursor pointing just after `event` in newest-first order."""
    raw = f"{iso_micro(event.occurred_at)}|{event.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (occurred_at, id) of a cursor; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), int(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a valid cursor") from exc


def recent_events(
    session: Session,
    *,
    limit: int,
    request_id: str | None = None,
    code: str | None = None,
    group_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: tuple[datetime, int] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest-first events matching the filters, and the cursor of the next page (None at the end)."""
    query = select(ErrorEvent)
    if request_id is not None:
        query = query.where(ErrorEvent.request_id == request_id)
    if code is not None:
        query = query.where(ErrorEvent.code == code)
    if group_id is not None:
        query = query.where(ErrorEvent.group_id == group_id)
    if since is not None:
        query = query.where(ErrorEvent.occurred_at >= since)
    if until is not None:
        query = query.where(ErrorEvent.occurred_at < until)
    if cursor is not None:
        at, ident = cursor
        query = query.where(or_(ErrorEvent.occurred_at < at, and_(ErrorEvent.occurred_at == at, ErrorEvent.id < ident)))
    rows = list(session.scalars(query.order_by(ErrorEvent.occurred_at.desc(), ErrorEvent.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return [event_dict(e) for e in rows[:limit]], next_cursor


def summary(session: Session, *, recent: int = 10) -> dict[str, Any]:
    """Seed 004's summary: total errors, counts per `category_severity`, the latest errors."""
    rows = session.execute(
        select(ErrorGroup.category, ErrorGroup.severity, func.sum(ErrorGroup.count))
        .where(SERVER_GROUPS)
        .group_by(ErrorGroup.category, ErrorGroup.severity)
    ).all()
    counts = {f"{cat.lower()}_{sev.lower()}": int(n or 0) for cat, sev, n in rows}
    latest = session.scalars(
        select(ErrorEvent)
        .where(ErrorEvent.source != CLIENT_SOURCE)
        .order_by(ErrorEvent.occurred_at.desc(), ErrorEvent.id.desc())
        .limit(recent)
    )
    return {
        "total_errors": sum(counts.values()),
        "error_counts": dict(sorted(counts.items())),
        "recent_errors": [
            {
                "error_id": e.event_id,
                "group_id": e.group_id,
                "code": e.code,
                "message": e.message,
                "category": e.category.lower(),
                "severity": e.severity.lower(),
                "timestamp": iso_micro(e.occurred_at),
            }
            for e in latest
        ],
    }
