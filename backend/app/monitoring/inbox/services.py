"""Failed emails and stuck storage files as the failed-work inbox sees them (kinds "email" and "storage").

Both tables keep the truth; this module only reads rows and moves them between states:

- `email_outbox`: in the inbox while `failed`; retry makes it `queued` (attempts 0, `failed_at`
  cleared) and the periodic `email.outbox` job sends it; discard makes it `discarded`.
- `storage_pending_sync`: in the inbox while `failed`; retry makes it `pending` (attempts 0,
  `next_attempt_at` and `failed_at` cleared) and the periodic `storage.sync` job uploads it; discard
  makes it `discarded`.

Retry and discard append a marker to the row's history (`errors`: RETRIED or DISCARDED, with the actor),
so the history shows who did what between the failed attempts. Discard keeps the reason
(`discard_reason`, `discarded_at`). Each transition is one conditional UPDATE (still `failed`, same
attempt count), so two admins acting at once change a row once.

Purge (the retention job, FAILED_WORK_RETENTION_DAYS): deletes rows given up (`discarded`) and rows
finished long ago (`sent` emails, `synced` files) older than the cutoff, so neither table grows
without bound; a discarded file's local copy is deleted with its row. Open rows (queued, sending,
pending, failed) are never purged, however old.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import delete, func, select, update

from ....log.redaction import redact, redact_value
from ...errors import APIError
from ...extensions import db
from ...models.outbox import (
    DISCARDED,
    FAILED,
    QUEUED,
    SENT,
    SYNC_DISCARDED,
    SYNC_FAILED,
    SYNC_PENDING,
    SYNC_SYNCED,
    EmailOutbox,
    PendingSync,
)
from ...resilience.history import append_error
from ...timeutil import as_utc, iso, utcnow
from . import FailedItem

logger = logging.getLogger(__name__)

PURGE_BATCH = 500  # rows per delete: a large backlog is purged in short transactions
_MARKER_KINDS = frozenset({"retry", "discard"})
_CODED = re.compile(r"^(?P<code>[A-Za-z_][A-Za-z0-9_.]{0,99}): (?P<message>.*)$", re.DOTALL)


def last_error(history: Sequence[dict[str, Any]], fallback: str | None) -> tuple[str | None, str | None]:
    """(code, message) of the latest failed attempt: from the history, else from `last_error` ("CODE: message")."""
    for entry in reversed(history):
        if entry.get("kind") not in _MARKER_KINDS:
            message = entry.get("message")
            return entry.get("code"), redact(str(message)) if message is not None else None
    if not fallback:
        return None, None
    found = _CODED.match(fallback)
    if found:
        return found["code"], redact(found["message"])
    return None, redact(fallback)


def _marker(code: str, kind: str, message: str) -> dict[str, Any]:
    return {"code": code, "kind": kind, "message": redact(message), "time": iso(utcnow())}


class _TableSource:
    """What the two tables share: a `failed` status, `failed_at`, an `errors` history and attempts."""

    kind: ClassVar[str]
    model: ClassVar[Any]
    failed_status: ClassVar[str]
    discarded_status: ClassVar[str]
    finished_status: ClassVar[str]
    finished_at: ClassVar[str]  # the column that says when a finished row finished

    def _when(self) -> Any:
        # When a row entered the inbox: `failed_at`, or its creation for rows failed before it was recorded.
        return func.coalesce(self.model.failed_at, self.model.created_at)

    def _open(self) -> Any:
        return self.model.status == self.failed_status

    def _title(self, row: Any) -> str:
        raise NotImplementedError

    def _details(self, row: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _item(self, row: Any) -> FailedItem:
        history = redact_value("history", list(row.errors or []))  # written by others: masked on the way out
        code, message = last_error(history, row.last_error)
        details = {
            **self._details(row),
            "last_error": row.last_error,
            "discarded_at": iso(row.discarded_at),
            "discard_reason": row.discard_reason,
        }
        return FailedItem(
            kind=self.kind,
            id=row.id,
            title=self._title(row),
            error_code=code,
            error_message=message,
            created_at=as_utc(row.created_at),
            failed_at=as_utc(row.failed_at),
            attempts=row.attempts,
            history=history,
            details=redact_value("details", details),
            status="failed" if row.status == self.failed_status else "discarded",
        )

    def _retry_values(self) -> dict[str, Any]:
        raise NotImplementedError

    def count(self, *, failed_before: datetime | None = None) -> int:
        """Rows in the inbox (that failed before `failed_before`, when given)."""
        stmt = select(func.count()).select_from(self.model).where(self._open())
        if failed_before is not None:
            stmt = stmt.where(self._when() < failed_before)
        return int(db.session.execute(stmt).scalar_one())

    def oldest(self) -> datetime | None:
        """When the oldest row in the inbox failed."""
        return as_utc(db.session.execute(select(func.min(self._when())).where(self._open())).scalar_one())

    def items(self, *, limit: int, offset: int = 0) -> list[FailedItem]:
        """Rows in the inbox, oldest failure first."""
        stmt = select(self.model).where(self._open()).order_by(self._when(), self.model.id)
        return [self._item(row) for row in db.session.execute(stmt.offset(offset).limit(limit)).scalars()]

    def get(self, item_id: int) -> FailedItem | None:
        """A row that failed (in the inbox, or discarded until purged), or None."""
        row = db.session.get(self.model, item_id, populate_existing=True)
        if row is None or row.status not in (self.failed_status, self.discarded_status):
            return None
        return self._item(row)

    def retry(self, item_id: int, *, actor: str) -> bool:
        """Put the row back in its replay queue with fresh attempts; False if it is not in the inbox."""
        marker = _marker("RETRIED", "retry", f"Retried by {actor}")
        return self._transition(item_id, marker, self._retry_values())

    def discard(self, item_id: int, *, reason: str, actor: str) -> bool:
        """Give the row up with the admin's reason; False if it is not in the inbox."""
        marker = _marker("DISCARDED", "discard", f"Discarded by {actor}: {reason}")
        values = {"status": self.discarded_status, "discarded_at": utcnow(), "discard_reason": reason[:500]}
        return self._transition(item_id, marker, values)

    def _transition(self, item_id: int, marker: dict[str, Any], values: dict[str, Any]) -> bool:
        row = db.session.get(self.model, item_id, populate_existing=True)
        if row is None or row.status != self.failed_status:
            db.session.rollback()
            return False
        model = self.model
        done = db.session.execute(
            update(model)
            # Still failed with the same attempts: a concurrent retry or discard of this row changes it once.
            .where(model.id == item_id, model.status == self.failed_status, model.attempts == row.attempts)
            .values(**values, errors=append_error(row.errors or [], marker))
            .returning(model.id)
            .execution_options(synchronize_session=False)
        ).first()
        db.session.commit()
        return done is not None

    def _purge_rows(self, condition: Any, columns: Sequence[Any]) -> list[Any]:
        """Delete rows matching `condition` in batches; the deleted rows' `columns`."""
        gone: list[Any] = []
        while True:
            ids = list(db.session.execute(select(self.model.id).where(condition).limit(PURGE_BATCH)).scalars())
            if not ids:
                return gone
            stmt = delete(self.model).where(self.model.id.in_(ids), condition)  # re-checked: rows may have moved
            gone += db.session.execute(stmt.returning(*columns).execution_options(synchronize_session=False)).all()
            db.session.commit()
            if len(ids) < PURGE_BATCH:
                return gone

    def _purge_finished(self, before: datetime) -> int:
        finished = getattr(self.model, self.finished_at)
        return len(self._purge_rows((self.model.status == self.finished_status) & (finished < before), [self.model.id]))


class EmailInboxSource(_TableSource):
    """Emails SendGrid refused for good or that used up their attempts (`email_outbox.status = failed`)."""

    kind = "email"
    model = EmailOutbox
    failed_status = FAILED
    discarded_status = DISCARDED
    finished_status = SENT
    finished_at = "sent_at"

    def _retry_values(self) -> dict[str, Any]:
        return {"status": QUEUED, "attempts": 0, "failed_at": None, "lease_expires_at": None}

    def _title(self, row: EmailOutbox) -> str:
        return f"email {row.dedup_key}"

    def _details(self, row: EmailOutbox) -> dict[str, Any]:
        return {
            "to": row.to_address,
            "subject": row.subject,
            "dedup_key": row.dedup_key,
            # Sends whose outcome was unknown: the recipient may already have this email.
            "possible_duplicates": row.possible_duplicates or 0,
        }

    def purge(self, before: datetime) -> int:
        """Delete discarded emails and sent ones older than `before`."""
        discarded = self._purge_rows(
            (EmailOutbox.status == DISCARDED) & (EmailOutbox.discarded_at < before), [EmailOutbox.id]
        )
        deleted = len(discarded) + self._purge_finished(before)
        if deleted:
            logger.info("Failed-work purge: deleted %s email outbox row(s)", deleted)
        return deleted


class StorageInboxSource(_TableSource):
    """Files that could not reach the bucket (`storage_pending_sync.status = failed`)."""

    kind = "storage"
    model = PendingSync
    failed_status = SYNC_FAILED
    discarded_status = SYNC_DISCARDED
    finished_status = SYNC_SYNCED
    finished_at = "synced_at"

    def __init__(self, local_file: Callable[[str], Path]) -> None:
        self._local_file = local_file  # where a key's local (fallback) copy lives: the storage adapter says

    def _retry_values(self) -> dict[str, Any]:
        return {"status": SYNC_PENDING, "attempts": 0, "next_attempt_at": None, "failed_at": None}

    def _title(self, row: PendingSync) -> str:
        return f"file {row.key}"

    def _details(self, row: PendingSync) -> dict[str, Any]:
        return {
            "key": row.key,
            "content_type": row.content_type,
            "size": row.size,
            "local_copy": self._has_local_copy(row.key),
        }

    def _has_local_copy(self, key: str) -> bool | None:
        try:
            return self._local_file(key).is_file()
        except (OSError, APIError):  # an unreadable directory, or a key the adapter refuses: unknown, not a 500
            logger.warning("Failed-work inbox: cannot check the local copy of %s", key, exc_info=True)
            return None

    def purge(self, before: datetime) -> int:
        """Delete discarded files (their rows and local copies) and synced rows older than `before`."""
        discarded = self._purge_rows(
            (PendingSync.status == SYNC_DISCARDED) & (PendingSync.discarded_at < before),
            [PendingSync.key, PendingSync.discarded_at],
        )
        for key, discarded_at in discarded:
            self._delete_local_copy(key, as_utc(discarded_at))
        deleted = len(discarded) + self._purge_finished(before)
        if deleted:
            logger.info("Failed-work purge: deleted %s storage sync row(s)", deleted)
        return deleted

    def _delete_local_copy(self, key: str, discarded_at: datetime | None) -> None:
        try:
            path = self._local_file(key)
            stat = path.stat()
        except FileNotFoundError:
            return
        except (OSError, APIError):  # an unreadable directory, or a stored key the adapter refuses as unsafe
            logger.warning("Failed-work purge: cannot reach the local copy of %s", key, exc_info=True)
            return
        # A file written after the discard is a new save of the same key (new bytes someone stored): keep it.
        if discarded_at is not None and stat.st_mtime > discarded_at.timestamp():
            logger.warning("Failed-work purge: %s was saved again after its discard; its local copy stays", key)
            return
        try:
            path.unlink(missing_ok=True)
        except OSError:
            logger.warning("Failed-work purge: cannot delete the local copy of %s", key, exc_info=True)
