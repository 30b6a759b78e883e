"""The security and performance event helpers, which run on every request: the queue's fast path."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .batching import ContextQueueHandler
from .context import _log_context
from .fields import _RESERVED, PERFORMANCE_LOGGER, SECURITY_LOGGER
from .records import _QUEUEABLE, StructuredEvent, _frozen
from .setup import _state

_security_logger = logging.getLogger(SECURITY_LOGGER)
_performance_logger = logging.getLogger(PERFORMANCE_LOGGER)


def _queue_is_only_handler(logger: logging.Logger, level: int, qh: ContextQueueHandler) -> bool:
    """Whether `logger`'s records at `level` reach our queue handler and nothing else, unfiltered."""
    if logger.disabled or logger.filters or qh.filters or level < qh.level:
        return False
    root = logging.root
    if logger.parent is root and not logger.handlers and logger.propagate:  # the usual shape
        return len(root.handlers) == 1 and root.handlers[0] is qh
    found = False
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if handler is not qh:
                return False
            found = True
        if not node.propagate:
            break
        node = node.parent
    return found


def _emit(logger: logging.Logger, level: int, msg: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    """Log one structured event: straight onto the queue when nothing else would see the record.

    These helpers run on every request. When the queue handler is the logger's only destination
    (production), the request thread queues a `StructuredEvent` tuple and the writer makes the
    record, skipping `makeRecord` (caller and thread-name look-ups no line shows), the handler chain
    and the copy in `prepare`: the same line is written. Any other handler or filter on the way
    (pytest's caplog, a deployer's error tracker) gets the standard path, `makeRecord` and
    `Logger.handle`. `extra` must be the caller's own fresh dict (the helpers build one).
    """
    qh = _state.queue_handler
    if qh is not None and _queue_is_only_handler(logger, level, qh):
        if not _QUEUEABLE.issuperset(map(type, extra.values())):
            for key, value in extra.items():  # `extra` is the helper's own dict: frozen in place
                if type(value) not in _QUEUEABLE:
                    extra[key] = _frozen(key, value)
        message = msg % args if args else msg
        # tuple.__new__: a NamedTuple's own constructor is a Python function, and this runs per request.
        event = (logger.name, level, message, extra, _log_context.get(), time.time(), threading.get_ident())
        if not qh.queue.offer(tuple.__new__(StructuredEvent, event)):
            qh.count_drop()
        return
    record = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None, "(unknown function)", extra)
    logger.handle(record)


def log_security_event(event_type: str, message: str, *, level: int = logging.WARNING, **fields: Any) -> None:
    """Write a security event (login, token failure, denial, admin action) to `security.log`."""
    if _security_logger.isEnabledFor(level):
        _emit(_security_logger, level, message, (), {"event_type": event_type, **_safe_extra(fields)})


def log_performance_metric(
    metric_name: str, value: float, *, unit: str = "ms", level: int = logging.INFO, **fields: Any
) -> None:
    """Write a performance metric (request duration, outbound call...) to `performance.log`."""
    if _performance_logger.isEnabledFor(level):
        extra = {"metric": metric_name, "value": value, "unit": unit, **_safe_extra(fields)}
        _emit(_performance_logger, level, "%s=%s%s", (metric_name, value, unit), extra)


def _safe_extra(fields: dict[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extras that clash with its own attributes; prefix them instead.
    if _RESERVED.isdisjoint(fields):
        return fields
    return {(f"field_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
