"""The failed-work inbox: every piece of work that failed for good and needs a human, in one place.

Four sources feed it, each keeping the truth in its own table (nothing is copied): dead jobs
(`jobs`), emails SendGrid refused or that used up their attempts (`email_outbox`), files that could
not reach the bucket (`storage_pending_sync`) and payments that took money but granted nothing
(`unapplied_payments`). A source implements `InboxSource`; `Inbox` lists them together, oldest
first, and routes an admin's retry or discard-with-reason to the source that owns the item.

The job, email and storage sources live beside this module (`inbox/jobs.py`, `inbox/services.py`: they
read those layers' tables, which monitoring may import); the payment source is the payments blueprint's
(`payments/failed_work.py`: it applies a payment again). All are built in one place, `create_app`, and
reach this module only through the protocol, so monitoring never imports a blueprint.
Retry puts the work back where it came from (a job requeued, an email queued, a file pending, a
payment applied again); discard keeps the item with its reason until `purge` deletes it after the
retention period (FAILED_WORK_RETENTION_DAYS).

`Inbox` is what the admin API, the CLI, the alert rule `failed_work`, `/metrics` and the retention
job use: it lists across kinds (oldest failure first, paginated), finds one item, and turns a
missing kind or item into typed errors (404 `FAILED_WORK_KIND_UNKNOWN`, 404 `FAILED_WORK_NOT_FOUND`,
409 `FAILED_WORK_NOT_OPEN` for an item that left the inbox). Reads for monitoring (`sizes`) and the
purge keep going when one source fails: that source is skipped and logged, the others answer.

Layer: monitoring; may import log, base, errors, resilience, services, jobs (tests/unit/test_layers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ...errors import ConflictError, NotFoundError
from ...timeutil import as_utc, iso

logger = logging.getLogger(__name__)

#: Inbox kinds, in the order the admin API and the dashboard show them.
KINDS = ("job", "email", "storage", "payment")


@dataclass(frozen=True)
class FailedItem:
    """One item waiting for an admin: what it is, its real error, its age and its history."""

    kind: str  # one of KINDS
    id: int  # the id in its source's table
    title: str  # one line an admin recognises ("render job 12", "email render-finished:7")
    error_code: str | None  # the real code (SERVICE_MISCONFIGURED, UPSTREAM_REJECTED, FILE_MISSING...)
    error_message: str | None  # the real message, redacted
    created_at: datetime | None  # when the work was first accepted
    failed_at: datetime | None  # when it entered the inbox
    attempts: int
    history: list[dict[str, Any]] = field(default_factory=list)  # each failed attempt: code, kind, message, time
    details: dict[str, Any] = field(default_factory=dict)  # source-specific, secrets masked
    status: str = "failed"  # "failed" while in the inbox; "discarded" once an admin gave it up
    # (a job the 7-day dead-letter TTL archived without an admin's reason is "archived")

    @property
    def open(self) -> bool:
        """Whether the item is in the inbox (retry and discard apply)."""
        return self.status == OPEN

    @property
    def since(self) -> datetime | None:
        """When the item entered the inbox (its creation time when the source did not record a failure time)."""
        return as_utc(self.failed_at or self.created_at)

    def age_seconds(self, now: datetime) -> int:
        """Seconds since the item failed (0 when unknown)."""
        since = self.since
        return max(0, int((now - since).total_seconds())) if since is not None else 0

    def summary(self, now: datetime) -> dict[str, Any]:
        """The list view: kind, id, title, real error, age, attempts."""
        return {
            "kind": self.kind,
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "created_at": iso(self.created_at),
            "failed_at": iso(self.failed_at),
            "age_seconds": self.age_seconds(now),
            "attempts": self.attempts,
        }

    def detail(self, now: datetime) -> dict[str, Any]:
        """The full view: the summary, every failed attempt and the source's details."""
        return {**self.summary(now), "history": list(self.history), "details": dict(self.details)}


OPEN = "failed"  # FailedItem.status of an item in the inbox


class FailedWorkKindUnknownError(NotFoundError):
    """The failed-work inbox has no source of this kind."""

    code = "FAILED_WORK_KIND_UNKNOWN"


class FailedWorkNotFoundError(NotFoundError):
    """No failed-work item of this kind has this id (it never failed, was retried, or was purged)."""

    code = "FAILED_WORK_NOT_FOUND"


class FailedWorkNotOpenError(ConflictError):
    """The item is no longer in the failed-work inbox (already retried or discarded)."""

    code = "FAILED_WORK_NOT_OPEN"


class InboxSource(Protocol):
    """One table of failed work, as the inbox sees it."""

    kind: str

    def count(self, *, failed_before: datetime | None = None) -> int:
        """Items in the inbox (only those that failed before `failed_before`, when given)."""
        ...

    def oldest(self) -> datetime | None:
        """When the oldest item in the inbox failed, or None when it holds none."""
        ...

    def items(self, *, limit: int, offset: int = 0) -> list[FailedItem]:
        """Items in the inbox, oldest failure first."""
        ...

    def get(self, item_id: int) -> FailedItem | None:
        """One item (discarded ones too, until purged), or None."""
        ...

    def retry(self, item_id: int, *, actor: str) -> bool:
        """Put the work back where it came from; False if the item is not in the inbox."""
        ...

    def discard(self, item_id: int, *, reason: str, actor: str) -> bool:
        """Give the work up, keeping the reason; False if the item is not in the inbox."""
        ...

    def purge(self, before: datetime) -> int:
        """Delete items given up (discarded, archived) before `before`; the number deleted."""
        ...


@dataclass(frozen=True)
class PurgeResult:
    """What one purge deleted per kind, and the kinds whose source failed (with the error)."""

    deleted: dict[str, int]
    failed: dict[str, str]

    @property
    def total(self) -> int:
        """Items deleted over every kind."""
        return sum(self.deleted.values())


#: Listing every kind at once merges the sources' pages in memory: deeper pages need `kind=`.
MAX_MERGED_DEPTH = 10_000
_EPOCH = datetime.min.replace(tzinfo=UTC)


class Inbox:
    """Every source together (built by `create_app`, kept in `app.extensions["inbox"]`)."""

    def __init__(self, sources: Iterable[InboxSource], *, on_error: Callable[[], None] | None = None) -> None:
        self._sources: dict[str, InboxSource] = {}
        for source in sources:
            if source.kind in self._sources:  # a wiring mistake: one kind's items would vanish from view
                raise ValueError(f"two failed-work sources of kind {source.kind!r}")
            self._sources[source.kind] = source
        # Called after a source failed (create_app passes the session's rollback), so the next source
        # does not inherit a broken transaction.
        self._on_error = on_error

    @property
    def kinds(self) -> Sequence[str]:
        """The kinds this inbox has a source for."""
        return tuple(self._sources)

    def source(self, kind: str) -> InboxSource | None:
        """The source of one kind, or None."""
        return self._sources.get(kind)

    def counts(self, *, failed_before: datetime | None = None) -> dict[str, int]:
        """Items per kind (every kind listed, zeros included)."""
        return {kind: source.count(failed_before=failed_before) for kind, source in self._sources.items()}

    def oldest(self) -> dict[str, datetime | None]:
        """When the oldest item of each kind failed."""
        return {kind: source.oldest() for kind, source in self._sources.items()}

    def require(self, kind: str) -> InboxSource:
        """The source of one kind, or 404 `FAILED_WORK_KIND_UNKNOWN`."""
        source = self._sources.get(kind)
        if source is None:
            shown = kind[:40]  # a path segment is the caller's text: echoed short
            raise FailedWorkKindUnknownError(
                f"The failed-work inbox has no kind {shown!r}.", details={"kind": shown, "kinds": list(self.kinds)}
            )
        return source

    def total(self, kind: str | None = None) -> int:
        """Items in the inbox (of one kind, when given)."""
        return self.require(kind).count() if kind else sum(self.counts().values())

    def page(self, kind: str | None = None, *, page: int = 1, per_page: int = 50) -> tuple[list[FailedItem], int]:
        """One page of items, oldest failure first, and the total: of one kind, or of every kind merged.

        Merging reads the first `page * per_page` items of every source, so without `kind` the depth is
        bounded by MAX_MERGED_DEPTH (the caller validates it); one kind pages in its own table.
        """
        offset = (page - 1) * per_page
        if kind:
            source = self.require(kind)
            return source.items(limit=per_page, offset=offset), source.count()
        merged: list[FailedItem] = []
        for source in self._sources.values():
            merged.extend(source.items(limit=offset + per_page))
        order = {k: i for i, k in enumerate(self._sources)}
        merged.sort(key=lambda item: (item.since or _EPOCH, order[item.kind], item.id))
        return merged[offset : offset + per_page], self.total()

    def get(self, kind: str, item_id: int) -> FailedItem:
        """One item (open or given up, until purged), or 404 `FAILED_WORK_NOT_FOUND`."""
        item = self.require(kind).get(item_id)
        if item is None:
            raise FailedWorkNotFoundError(
                f"No failed {kind} with id {item_id} (it never failed, was retried, or was purged).",
                details={"kind": kind, "id": item_id},
            )
        return item

    def retry(self, kind: str, item_id: int, *, actor: str) -> FailedItem:
        """Put one item's work back where it came from; the item as it was. 404/409 when it is not open."""
        item = self._open(kind, item_id)
        if not self.require(kind).retry(item_id, actor=actor):
            raise self._not_open(kind, item_id, "it changed while it was being retried")
        logger.info("Failed %s %s retried by %s", kind, item_id, actor)
        return item

    def discard(self, kind: str, item_id: int, *, reason: str, actor: str) -> FailedItem:
        """Give one item up with the admin's reason; the item as it was. 404/409 when it is not open."""
        item = self._open(kind, item_id)
        if not self.require(kind).discard(item_id, reason=reason, actor=actor):
            raise self._not_open(kind, item_id, "it changed while it was being discarded")
        logger.info("Failed %s %s discarded by %s: %s", kind, item_id, actor, reason)
        return item

    def retry_all(self, kind: str, *, actor: str, limit: int) -> list[int]:
        """Retry every open item of one kind, oldest first, at most `limit`; the ids retried."""
        source = self.require(kind)
        retried = [item.id for item in source.items(limit=limit) if source.retry(item.id, actor=actor)]
        if retried:
            logger.info("%s failed %s item(s) retried by %s", len(retried), kind, actor)
        return retried

    def sizes(self) -> dict[str, tuple[int, datetime | None]]:
        """(items, oldest failure) of every kind whose source answers; a failing source is logged and left out."""
        out: dict[str, tuple[int, datetime | None]] = {}
        for kind, source in self._sources.items():
            try:
                out[kind] = (source.count(), as_utc(source.oldest()))
            except Exception:  # monitoring never raises: the other kinds still report
                logger.warning("Failed-work inbox: the %s source could not be read", kind, exc_info=True)
                self._recover()
        return out

    def purge(self, before: datetime) -> PurgeResult:
        """Delete what every source gave up before `before`; a failing source is reported, the others still purge."""
        deleted: dict[str, int] = {}
        failed: dict[str, str] = {}
        for kind, source in self._sources.items():
            try:
                deleted[kind] = source.purge(before)
            except Exception as exc:  # one broken table must not keep the others growing
                logger.error("Failed-work purge of %s failed: %s", kind, exc, exc_info=True)
                failed[kind] = f"{type(exc).__name__}: {exc}"[:500]
                self._recover()
        return PurgeResult(deleted, failed)

    def _open(self, kind: str, item_id: int) -> FailedItem:
        item = self.get(kind, item_id)
        if not item.open:
            raise self._not_open(kind, item_id, f"it is {item.status}")
        return item

    @staticmethod
    def _not_open(kind: str, item_id: int, why: str) -> FailedWorkNotOpenError:
        return FailedWorkNotOpenError(
            f"The failed {kind} {item_id} is no longer in the inbox: {why}.", details={"kind": kind, "id": item_id}
        )

    def _recover(self) -> None:
        if self._on_error is not None:
            try:
                self._on_error()
            except Exception:  # the hook is a best effort; the failure it follows is already logged
                logger.warning("Failed-work inbox: recovery after a source failure failed", exc_info=True)
