"""The sync of local fallback files to the bucket (`StorageService.sync_pending`, periodic job `storage.sync`).

It never blocks behind one bad file. Each row is claimed with a lease (a conditional UPDATE pushes
its `next_attempt_at` past now; that value is also the fencing token every later write checks), so
two workers never upload or count the same row, and a worker whose lease ran out cannot mark it.
Every attempt's real error goes into the row's history (`replay.Failure`: the code, what the bucket
said, the classifier's verdict on the cause). After a failure the row backs off per the jobs' policy
(`resilience.retry.decide`: full jitter up to STORAGE_SYNC_MAX_DELAY, a throttled bucket's
Retry-After honoured, a permanent refusal retried at most once) and, out of attempts
(STORAGE_SYNC_MAX_ATTEMPTS), ends `failed`: the failed-work inbox, whose retry makes it `pending`
and due again. A row whose local file vanished ends `failed` at once (LOCAL_FILE_MISSING), never
"synced". The other files go on in the same run; only an open breaker (the bucket itself is down)
ends it, and it costs no row an attempt.
"""

from __future__ import annotations

import datetime as dt
import logging
from enum import Enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from ..errors import APIError, LocalFileMissingError
from ..extensions import db
from ..models.outbox import SYNC_FAILED, SYNC_PENDING, SYNC_SYNCED, PendingSync
from ..resilience.recovery import CircuitOpenError
from ..resilience.retry import Decision, decide
from ..timeutil import utcnow
from .replay import Failure
from .storage import SERVICE, peer_said

if TYPE_CHECKING:
    from .storage import StorageService

logger = logging.getLogger(__name__)


class SyncOutcome(Enum):
    """What one claimed row's sync attempt came to."""

    UPLOADED = "uploaded"  # in the bucket, marked synced
    RETRYING = "retrying"  # failed; backs off before its next attempt
    FAILED = "failed"  # out of attempts, refused for good, or its local file is gone: the inbox
    SKIPPED = "skipped"  # saved again meanwhile, or the lease was lost: the next run sees it
    STOPPED = "stopped"  # the breaker is open: the bucket is down, the run ends


class StorageSync:
    """One run of the sync over `storage_pending_sync`, for one storage adapter (its policy, lease and bucket)."""

    def __init__(self, storage: StorageService) -> None:
        self.storage = storage
        self.policy = storage.sync_policy
        self.lease = storage.sync_lease
        self._rng = storage.sync_rng

    def run(self, limit: int) -> int:
        """Try up to `limit` due rows, each claimed first; the number uploaded. Ends early only on an open breaker."""
        outcomes: dict[SyncOutcome, int] = dict.fromkeys(SyncOutcome, 0)
        for row_id in self._due_rows(limit):
            lease = self._claim(row_id)
            if lease is None:
                continue  # another worker has it, or it was synced or saved again meanwhile
            outcome = self._sync_row(row_id, lease)
            outcomes[outcome] += 1
            if outcome is SyncOutcome.STOPPED:
                break  # the bucket is down: every other file would be refused the same way
        uploaded = outcomes[SyncOutcome.UPLOADED]
        if any(outcomes.values()):
            logger.info(
                "Storage sync: %s uploaded, %s backing off, %s failed (inbox)%s",
                uploaded,
                outcomes[SyncOutcome.RETRYING],
                outcomes[SyncOutcome.FAILED],
                "; stopped: the storage breaker is open" if outcomes[SyncOutcome.STOPPED] else "",
            )
        return uploaded

    def _due_rows(self, limit: int) -> list[int]:
        now = utcnow()
        return list(
            db.session.scalars(
                select(PendingSync.id)
                .where(
                    PendingSync.status == SYNC_PENDING,
                    or_(PendingSync.next_attempt_at.is_(None), PendingSync.next_attempt_at <= now),
                )
                .order_by(PendingSync.id)
                .limit(limit)
            )
        )

    def _claim(self, row_id: int) -> dt.datetime | None:
        """Take the row for one attempt: push its `next_attempt_at` past now (the lease, and the fencing token)."""
        now = utcnow()
        lease = now + self.lease
        claimed = db.session.execute(
            update(PendingSync)
            .where(
                PendingSync.id == row_id,
                PendingSync.status == SYNC_PENDING,
                or_(PendingSync.next_attempt_at.is_(None), PendingSync.next_attempt_at <= now),
            )
            .values(next_attempt_at=lease)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        return lease if claimed == 1 else None

    def _held(self, row_id: int, lease: dt.datetime, **values: Any) -> bool:
        """Write `values` only if the row is still ours (pending, with our lease); whether it was."""
        done = db.session.execute(
            update(PendingSync)
            .where(PendingSync.id == row_id, PendingSync.status == SYNC_PENDING, PendingSync.next_attempt_at == lease)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        return done == 1

    def _sync_row(self, row_id: int, lease: dt.datetime) -> SyncOutcome:
        row = db.session.execute(
            select(PendingSync).where(PendingSync.id == row_id).execution_options(populate_existing=True)
        ).scalar_one()
        key, content_type = row.key, row.content_type
        path = self.storage.local_file(key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return self._record_failure(row_id, lease, _local_file_failure(key, exc))
        try:
            self.storage.sync_upload(key, data, content_type)
        except CircuitOpenError as exc:
            # The bucket is down, not this file: hand the row back untouched (no attempt spent) and stop.
            self._held(row_id, lease, next_attempt_at=None)
            logger.warning("Storage sync stopped at %s: the storage breaker is open (%s)", key, exc.message)
            return SyncOutcome.STOPPED
        except APIError as exc:
            return self._record_failure(row_id, lease, Failure.of(exc, peer_said(exc.__cause__)))
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = data  # removed after we read it: what we uploaded is the last version there was
        if current != data:
            # Saved again while we uploaded: the row stays pending, due now, and the next run sends the new bytes.
            self._held(row_id, lease, next_attempt_at=None)
            return SyncOutcome.SKIPPED
        if not self._held(
            row_id,
            lease,
            status=SYNC_SYNCED,
            synced_at=utcnow(),
            next_attempt_at=None,
            failed_at=None,
            attempts=PendingSync.attempts + 1,
        ):
            return SyncOutcome.SKIPPED  # our lease ran out or the file was saved again: the row is someone else's
        path.unlink(missing_ok=True)  # the bucket has it now; the row keeps the history
        return SyncOutcome.UPLOADED

    def _record_failure(self, row_id: int, lease: dt.datetime, failure: Failure) -> SyncOutcome:
        """Write one failed attempt into the row: its history, and a backoff or the end (`failed`, the inbox)."""
        row = db.session.get(PendingSync, row_id)
        assert row is not None  # we hold its lease; rows are never deleted while pending
        now, key = utcnow(), row.key
        attempt = row.attempts + 1
        history = failure.appended_to(row.errors, attempt, now)
        if failure.code == LocalFileMissingError.code:
            decision = Decision(False, 0.0, "its local file is gone: waiting cannot bring it back")
        else:
            decision = decide(failure.verdict, attempt, self.policy.max_attempts, self.policy, rng=self._rng)
        values: dict[str, Any] = {"attempts": attempt, "errors": history, "last_error": failure.last_error}
        if decision.retry:
            values["next_attempt_at"] = now + dt.timedelta(seconds=decision.delay)
        else:
            values.update(status=SYNC_FAILED, failed_at=now, next_attempt_at=None)
        if not self._held(row_id, lease, **values):
            return SyncOutcome.SKIPPED  # saved again or taken over meanwhile: the newer state wins
        if decision.retry:
            logger.warning(
                "Storage sync of %s failed (attempt %s of %s): %s; next try in %.0fs",
                key,
                attempt,
                self.policy.max_attempts,
                failure.last_error,
                decision.delay,
                extra={"error_code": failure.code},
            )
            return SyncOutcome.RETRYING
        logger.error(
            "Storage sync of %s failed for good after %s attempt(s) (%s): %s; it waits in the failed-work inbox",
            key,
            attempt,
            decision.reason,
            failure.last_error,
            extra={"error_code": failure.code},
        )
        return SyncOutcome.FAILED


def _local_file_failure(key: str, exc: OSError) -> Failure:
    """The failure of a row whose local copy cannot be read: gone (for good) or unreadable (maybe for now)."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        error = LocalFileMissingError(
            f"The local copy of {key} is gone (removed from {SERVICE} fallback storage?): nothing is left to upload."
        )
    else:
        error = LocalFileMissingError(
            f"The local copy of {key} cannot be read: {type(exc).__name__} ({exc.strerror or 'no reason given'}).",
            code="LOCAL_FILE_UNREADABLE",
        )
    error.__cause__ = exc
    return Failure.of(error)
