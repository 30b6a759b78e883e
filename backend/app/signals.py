"""The app's signals: how the layers below tell monitoring what happened without importing it.

Every signal is sent with `sender=app`, so receivers connect with `sender=app` and the many apps of one
process (tests, a CLI beside the web app) never hear each other. `send` calls each receiver in turn with
its own guard: a monitoring receiver that raises is logged and never breaks the call that sent it, nor
keeps the receivers after it from running.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import NamedSignal, Namespace

logger = logging.getLogger(__name__)

_signals = Namespace()

#: Sent for every error response: kwargs `error` (the APIError answered) and `exception` (the original, or None).
error_occurred = _signals.signal("error-occurred")


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
