"""Everything that carries one request id: the request, the jobs it started, their errors and log lines.

The id a user quotes (shown in every error envelope, on every render and its error) is the key: the
request's performance.log line or, failing that, its error events say what the request was; jobs
remember the request that enqueued them (`jobs.request_id`) and their workers log and record errors
under it, so one look-up finds the whole story.

Log files are read bounded, so a look-up costs the same however big the logs grow: the last
`max_bytes` of each `*.log` file of the log directory (rotated backups are not read), at most
`max_lines` matching lines returned, earliest first; `truncated` says when older bytes were not read
or more lines matched than were returned.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...log.redaction import redact_value
from ..models import ErrorEvent, ErrorGroup
from ..models.job import Job
from ..timeutil import iso_micro
from .errors.stats import event_dict, group_dict

logger = logging.getLogger(__name__)

MAX_JOBS = 50
MAX_EVENTS = 100
DEFAULT_MAX_LINES = 200
DEFAULT_SCAN_BYTES = 8 * 1024 * 1024  # per file: the default LOG_MAX_BYTES is 10 MiB


@dataclass
class LogScan:
    """The log lines that carry one request id, and how much was read to find them."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    matched: int = 0
    truncated: bool = False


def _tail(path: Path, max_bytes: int) -> tuple[bytes, int, bool]:
    """The last whole lines of `path` within `max_bytes`; (data, file size, whether older bytes were left)."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        start = max(0, size - max_bytes)
        handle.seek(start)
        data = handle.read(size - start)
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""  # the first line is cut: skip it
    end = data.rfind(b"\n")
    return (data[: end + 1] if end >= 0 else b""), size, start > 0


def scan_logs(log_dir: Path, request_id: str, *, max_lines: int, max_bytes: int) -> LogScan:
    """The JSON lines of `log_dir/*.log` whose `request_id` is `request_id` (bounded; see the module)."""
    scan = LogScan()
    # The writer serialises without spaces, and a valid request id needs no JSON escaping.
    needle = b'"request_id":"' + request_id.encode("ascii") + b'"'
    try:
        paths = sorted(p for p in log_dir.glob("*.log") if p.is_file())
    except OSError as exc:  # a missing or unreadable log directory: the database still answers
        logger.warning("Request trace: cannot list %s: %s", log_dir, type(exc).__name__)
        return scan
    found: list[dict[str, Any]] = []
    for path in paths:
        try:
            data, size, cut = _tail(path, max_bytes)
        except OSError as exc:
            logger.warning("Request trace: cannot read %s: %s", path.name, type(exc).__name__)
            scan.files.append({"name": path.name, "error": type(exc).__name__})
            continue
        matched = 0
        position = data.find(needle)
        while position >= 0:
            line_start = data.rfind(b"\n", 0, position) + 1
            line_end = data.find(b"\n", position)
            try:
                line = json.loads(data[line_start:line_end])
            except ValueError:
                line = None
            if isinstance(line, dict) and line.get("request_id") == request_id:
                matched += 1
                if matched <= max_lines:  # a file's earliest max_lines: enough for the earliest of the merge
                    found.append({"file": path.name, **line})
            position = data.find(needle, line_end)
        scan.matched += matched
        scan.truncated = scan.truncated or cut
        scan.files.append({"name": path.name, "size": size, "scanned_bytes": len(data), "cut": cut, "matched": matched})
    found.sort(key=lambda line: str(line.get("timestamp") or ""))
    scan.lines = found[:max_lines]
    scan.truncated = scan.truncated or scan.matched > len(scan.lines)
    return scan


def _job_dict(job: Job) -> dict[str, Any]:
    last_error = (
        {"code": job.last_error_code, "message": job.last_error_message} if job.last_error_code is not None else None
    )
    return {
        "id": job.id,
        "kind": job.kind,
        "queue": job.queue,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "user_id": job.user_id,
        "payload": redact_value("payload", dict(job.payload or {})),
        "last_error": last_error,
        "errors": list(job.errors or []),
        "failure_analysis": job.failure_analysis,
        "created_at": iso_micro(job.created_at),
        "finished_at": iso_micro(job.finished_at),
        "next_attempt_at": iso_micro(job.next_attempt_at),
    }


def _event_dict(event: ErrorEvent) -> dict[str, Any]:
    out = event_dict(event)
    try:
        out["context"] = json.loads(event.context) if event.context else None
    except ValueError:  # stored cut to its column's size: show what is there
        out["context"] = event.context
    return out


def _request_facts(request_id: str, lines: list[dict[str, Any]], events: list[ErrorEvent]) -> dict[str, Any] | None:
    """What the request was: its performance.log line if read, else its first error event, else None."""
    for line in lines:
        if line.get("file") == "performance.log" and line.get("metric") == "request":
            return {
                "request_id": request_id,
                "source": "performance.log",
                "at": line.get("timestamp"),
                "method": line.get("method"),
                "path": line.get("path"),
                "endpoint": line.get("endpoint"),
                "status": line.get("status"),
                "duration_ms": line.get("value"),
                "user_id": line.get("user_id"),
                "error_code": line.get("error_code"),
            }
    for event in events:
        if event.source == "http":
            return {
                "request_id": request_id,
                "source": "error_events",
                "at": iso_micro(event.occurred_at),
                "method": event.method,
                "path": event.path,
                "endpoint": event.endpoint,
                "status": event.status_code,
                "duration_ms": None,
                "user_id": event.user_id,
                "error_code": event.code,
            }
    return None


def trace_request(
    session: Session,
    request_id: str,
    *,
    log_dir: Path,
    max_lines: int = DEFAULT_MAX_LINES,
    max_bytes: int = DEFAULT_SCAN_BYTES,
) -> dict[str, Any] | None:
    """The request, its jobs, their error events and groups and its log lines; None when nothing carries the id."""
    jobs = list(session.scalars(select(Job).where(Job.request_id == request_id).order_by(Job.id).limit(MAX_JOBS)))
    events = list(
        session.scalars(
            select(ErrorEvent)
            .where(ErrorEvent.request_id == request_id)
            .order_by(ErrorEvent.occurred_at, ErrorEvent.id)
            .limit(MAX_EVENTS)
        )
    )
    group_ids = sorted({event.group_id for event in events})
    groups = list(session.scalars(select(ErrorGroup).where(ErrorGroup.id.in_(group_ids)))) if group_ids else []
    logs = scan_logs(log_dir, request_id, max_lines=max_lines, max_bytes=max_bytes)
    if not (jobs or events or logs.matched):
        return None
    return {
        "request_id": request_id,
        "request": _request_facts(request_id, logs.lines, events),
        "jobs": [_job_dict(job) for job in jobs],
        "error_events": [_event_dict(event) for event in events],
        "error_groups": [group_dict(group) for group in groups],
        "logs": {
            "lines": logs.lines,
            "matched": logs.matched,
            "truncated": logs.truncated,
            "files": logs.files,
            "max_lines": max_lines,
            "max_bytes_per_file": max_bytes,
        },
    }
