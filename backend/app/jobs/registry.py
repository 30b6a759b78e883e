"""Job kinds and periodic schedules: the code a job record's `kind` names.

Kinds are code, registered when their module is imported (like Flask views or Celery tasks):

    @job_kind("email.send", max_attempts=8, base_delay=5)
    def send_email(ctx: JobContext) -> dict: ...

    register_periodic("storage.sync", 300, sync_storage)   # a kind plus a schedule, in one line

A compensation undoes a completed step when the job ends failed or dead (seed 003):

    @send_email.compensation("refund_credit")
    def refund(ctx: JobContext, args: dict) -> None: ...

`REGISTRY` is process-wide on purpose (every worker thread must see the same kinds); tests
register their own kinds and remove them with `unregister`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..resilience.retry import RetryPolicy

if TYPE_CHECKING:
    from flask import Flask

    from .compensation import CompensationContext
    from .context import JobContext

logger = logging.getLogger(__name__)

Handler = Callable[["JobContext"], Any]
Compensation = Callable[["CompensationContext", dict[str, Any]], Any]
DEFAULT_QUEUE = "default"


@dataclass
class JobKind:
    """A named job handler with its queue, retry policy and compensations."""

    name: str
    handler: Handler
    queue: str = DEFAULT_QUEUE
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: bool = True  # False: an exhausted job ends `failed` (kept, logged) instead of `dead`
    compensations: dict[str, Compensation] = field(default_factory=dict)

    def compensation(self, name: str) -> Callable[[Compensation], Compensation]:
        """Register a compensation this kind's steps can ask for by name."""

        def decorate(func: Compensation) -> Compensation:
            self.compensations[name] = func
            return func

        return decorate

    def __call__(self, ctx: JobContext) -> Any:
        """Run the handler (so a decorated function stays callable in unit tests)."""
        return self.handler(ctx)


@dataclass(frozen=True)
class Periodic:
    """A kind enqueued every `every_seconds` (one job per time slot across all workers)."""

    name: str
    every_seconds: float


class JobRegistry:
    """Kinds by name and the periodic schedule."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self._periodic: dict[str, Periodic] = {}
        self._lock = threading.Lock()

    def register(self, kind: JobKind, *, replace: bool = False) -> JobKind:
        """Add a kind; registering a different handler under a taken name is a bug unless `replace`."""
        with self._lock:
            existing = self._kinds.get(kind.name)
            if existing is not None and not replace and existing.handler is not kind.handler:
                raise ValueError(f"job kind {kind.name!r} is already registered")
            self._kinds[kind.name] = kind
        return kind

    def unregister(self, name: str) -> None:
        """Remove a kind and its schedule (tests)."""
        with self._lock:
            self._kinds.pop(name, None)
            self._periodic.pop(name, None)

    def get(self, name: str) -> JobKind | None:
        """The kind called `name`, if registered."""
        return self._kinds.get(name)

    def kinds(self) -> list[JobKind]:
        """Every registered kind."""
        return list(self._kinds.values())

    def queues(self) -> list[str]:
        """Every queue some kind uses."""
        return sorted({k.queue for k in self._kinds.values()} | {DEFAULT_QUEUE})

    def schedule(self, name: str, every_seconds: float) -> None:
        """Enqueue the registered kind `name` every `every_seconds`."""
        if every_seconds <= 0:
            raise ValueError("every_seconds must be positive")
        if name not in self._kinds:
            raise ValueError(f"cannot schedule unknown job kind {name!r}")
        with self._lock:
            self._periodic[name] = Periodic(name, float(every_seconds))

    def periodic(self, overrides: Mapping[str, float] | None = None) -> list[Periodic]:
        """Every schedule, an app's own intervals (`overrides`, from `schedule_for_app`) in place of the defaults."""
        schedules = dict(self._periodic)
        for name, every in (overrides or {}).items():
            if name in self._kinds:
                schedules[name] = Periodic(name, every)
        return list(schedules.values())

    @contextmanager
    def temporary(self, kind: JobKind) -> Iterator[JobKind]:
        """Register `kind` for the duration of a block (tests)."""
        self.register(kind, replace=True)
        try:
            yield kind
        finally:
            self.unregister(kind.name)


REGISTRY = JobRegistry()


def job_kind(
    name: str,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = 5,
    base_delay: float = 2.0,
    max_delay: float = 300.0,
    permanent_retries: int = 1,
    dead_letter: bool = True,
    registry: JobRegistry | None = None,
) -> Callable[[Handler], JobKind]:
    """Decorator: register a function as the handler of job kind `name`."""
    policy = RetryPolicy(
        max_attempts=max_attempts, base_delay=base_delay, max_delay=max_delay, permanent_retries=permanent_retries
    )

    def decorate(func: Handler) -> JobKind:
        kind = JobKind(name, func, queue=queue, policy=policy, dead_letter=dead_letter)
        return (registry or REGISTRY).register(kind)

    return decorate


APP_SCHEDULES = "job_schedules"


def schedule_for_app(app: Flask, name: str, every_seconds: float) -> None:
    """Run kind `name` every `every_seconds` in `app`'s workers only (config data; the registry keeps the default).

    Kinds are code, shared by every app of the process; an interval read from one app's config is that app's:
    written into the process-wide registry, the last app built would set it for all of them.
    """
    if every_seconds <= 0:
        raise ValueError("every_seconds must be positive")
    app.extensions.setdefault(APP_SCHEDULES, {})[name] = float(every_seconds)


def app_schedules(app: Flask) -> dict[str, float]:
    """The intervals `app` set for itself with `schedule_for_app`."""
    return dict(app.extensions.get(APP_SCHEDULES, {}))


def register_periodic(
    name: str,
    every_seconds: float,
    func: Handler,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = 3,
    base_delay: float = 5.0,
    dead_letter: bool = False,
    registry: JobRegistry | None = None,
) -> JobKind:
    """Register `func` as kind `name` and run it every `every_seconds` (the one-liner for owners).

    Periodic kinds default to `dead_letter=False`: an exhausted tick ends `failed` (kept with its
    errors) because the next tick runs the same work again.
    """
    target = registry or REGISTRY
    kind = job_kind(
        name, queue=queue, max_attempts=max_attempts, base_delay=base_delay, dead_letter=dead_letter, registry=target
    )(func)
    target.schedule(name, every_seconds)
    logger.debug("Periodic job %s every %ss", name, every_seconds)
    return kind
