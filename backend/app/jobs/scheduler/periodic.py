"""Enqueue periodic kinds on time: one job per time slot, however many workers tick.

Every running worker ticks the scheduler. A schedule of `every_seconds` divides time into slots
(`floor(epoch / every_seconds)`); each tick enqueues the current slot's job with the idempotency
key `slot-<n>`, and the unique (kind, idempotency_key) constraint lets exactly one insert win
across processes and machines. No leader election, no extra table: a worker that dies just stops
ticking, and the others keep the schedule. The job then runs like any other (retries, record).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from ...extensions import db
from ...timeutil import iso
from ..records import enqueue
from ..registry import REGISTRY, JobRegistry, Periodic

logger = logging.getLogger(__name__)


def slot_of(at: datetime, every_seconds: float) -> int:
    """The time slot `at` falls in."""
    return int(at.timestamp() // every_seconds)


class PeriodicScheduler:
    """Ticks the registry's schedules; remembers the last slot enqueued per schedule."""

    def __init__(self, registry: JobRegistry | None = None, overrides: Mapping[str, float] | None = None) -> None:
        self._registry = registry or REGISTRY
        self._overrides = dict(overrides or {})  # this app's own intervals (`schedule_for_app`)
        self._last_slot: dict[str, int] = {}

    def schedules(self) -> list[Periodic]:
        """What this scheduler enqueues: the registry's schedules with the app's own intervals."""
        return self._registry.periodic(self._overrides)

    def tick(self, now: datetime) -> list[int]:
        """Enqueue every schedule whose slot changed since the last tick; the job ids recorded."""
        recorded: list[int] = []
        for periodic in self.schedules():
            slot = slot_of(now, periodic.every_seconds)
            if self._last_slot.get(periodic.name) == slot:
                continue
            due = datetime.fromtimestamp(slot * periodic.every_seconds, tz=now.tzinfo)
            try:
                job = enqueue(
                    periodic.name, {"slot": slot, "scheduled_for": iso(due)}, idempotency_key=f"slot-{slot}", now=now
                )
            except SQLAlchemyError as exc:
                # The database is down: try this slot again on the next tick.
                db.session.rollback()
                logger.warning("Could not enqueue periodic job %s: %s", periodic.name, exc)
                continue
            self._last_slot[periodic.name] = slot
            recorded.append(job.id)
        return recorded
