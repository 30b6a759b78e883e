"""The app's signals: how the layers below tell monitoring what happened without importing it.

Every signal is sent with `sender=app`, so receivers connect with `sender=app` and the many apps of one
process (tests, a CLI beside the web app) never hear each other. `send` calls each receiver in turn with
its own guard: a monitoring receiver that raises is logged and never breaks the call that sent it, nor
keeps the receivers after it from running.

`request_finished` is the exception: it runs after every request, where blinker's dispatch costs about
7 µs for four receivers against 0.3 µs for a plain list (measured here), so it is an `AppHook`, a list of
callables kept on the app and called in order by the request pipeline's one `after_request` hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from blinker import NamedSignal, Namespace

if TYPE_CHECKING:
    from flask import Flask, Request, Response

logger = logging.getLogger(__name__)

_signals = Namespace()

#: Sent for every error response: kwargs `error` (the APIError answered) and `exception` (the original, or None).
error_occurred = _signals.signal("error-occurred")

#: Sent when a job attempt fails: kwargs `error` (the exception), `claim` (the job's claim) and `outcome`.
job_failed = _signals.signal("job-failed")

#: Sent when the tracing exporter's bounded queue drops spans: kwargs `count` and `reason` (the SDK's error type:
#: `queue_full` while the collector is slow or down, `already_shutdown` after a graceful shutdown).
spans_dropped = _signals.signal("spans-dropped")

F = TypeVar("F", bound=Callable[..., Any])


class AppHook(Generic[F]):
    """A per-app list of plain callables, for a hot path where blinker's dispatch would cost every call."""

    def __init__(self, key: str) -> None:
        self.key = key  # the app.extensions entry that holds the list

    def connect(self, app: Flask, receiver: F) -> None:
        """Call `receiver` from now on, after the ones connected before it."""
        app.extensions.setdefault(self.key, []).append(receiver)

    def receivers(self, app: Flask) -> list[F]:
        """The app's list itself (receivers connected later join it)."""
        receivers: list[F] = app.extensions.setdefault(self.key, [])
        return receivers


#: What a request observer is given after every request: the request, the response, and the seconds since
#: the request started (None when the start hook did not run for it).
RequestObserver = Callable[["Request", "Response", "float | None"], None]

#: Called after every request (the performance.log line, metrics, SLO counts, error statistics); unguarded,
#: as an `after_request` hook is: an observer must not raise.
request_finished: AppHook[RequestObserver] = AppHook("request_observers")


def send(signal: NamedSignal, sender: Any, **kwargs: Any) -> None:
    """`signal.send(sender, **kwargs)` with a guard per receiver, minus blinker's coroutine check and result list.

    The receivers are blinker's (those connected for `sender` or for any sender, in its order, none while the
    signal is muted); this runs on every error answered, so the no-receiver case returns at once.
    """
    if signal.is_muted or not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:  # monitoring never breaks the call that sent the signal; the failure itself is logged
            logger.exception("A %s receiver failed", signal.name)
