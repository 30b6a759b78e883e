"""The failed-work inbox: every piece of work that failed for good and needs a human, in one place.

Four sources feed it, each keeping the truth in its own table (nothing is copied): dead jobs
(`jobs`), emails SendGrid refused or that used up their attempts (`email_outbox`), files that could
not reach the bucket (`storage_pending_sync`) and payments that took money but granted nothing
(`unapplied_payments`). A source implements `InboxSource`; `Inbox` lists them together, oldest
first, and routes an admin's retry or discard-with-reason to the source that owns the item.

The sources are built in one place, `create_app`, and reach this module only through the
protocol, so monitoring never imports a blueprint. Retry puts the work back where it came from
(a job requeued, an email queued, a file pending, a payment applied again); discard keeps the item
with its reason until `purge` deletes it after the retention period.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

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


class Inbox:
    """Every source together (built by `create_app`, kept in `app.extensions["inbox"]`)."""

    def __init__(self, sources: Iterable[InboxSource]) -> None:
        self._sources = {source.kind: source for source in sources}

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
