"""The seed's logging module, now a facade over the package `backend/log/` (issue #16).

Old callers and tests import from here; the app imports the modules of `backend/log/` directly. Where
each part lives now (the design notes are in `backend/log/__init__.py`):
- constants (`SECURITY_LOGGER`, `CONTEXT_FIELDS`, `LOG_FILES`, `MAX_BATCH`...): `backend/log/fields.py`
- the log context (`bind_log_context`, `log_context`, `peek_log_context`...): `backend/log/context.py`
- record freezing and finishing (`FlatFields`, `finish_record`, `StructuredEvent`): `backend/log/records.py`
- the line formats (`JsonFormatter`, `ConsoleFormatter`): `backend/log/formatting.py`
- the file sinks (`SafeRotatingFileHandler`): `backend/log/sinks.py`
- the queue and the writer thread (`ContextQueueHandler`, `LogQueue`, `BatchingListener`): `backend/log/batching.py`
- set-up and shutdown (`configure_logging`, `flush_logs`, `sink_status`, `_state`): `backend/log/setup.py`
- the event helpers (`log_security_event`, `log_performance_metric`): `backend/log/events.py`
- secret redaction and neutralisation: `backend/log/redaction.py`

These are the same objects, bound once at import: to monkeypatch a name, patch it in the module that uses it.
"""

from __future__ import annotations

from .log.batching import BatchingListener, ContextQueueHandler, LogQueue
from .log.context import (
    bind_cleaned_log_context,
    bind_log_context,
    clear_log_context,
    current_log_context,
    log_context,
    peek_log_context,
)
from .log.events import log_performance_metric, log_security_event
from .log.fields import (
    BATCH_LINGER_SECONDS,
    CONTEXT_FIELDS,
    DROP_MEMORY_SECONDS,
    LOG_FILES,
    MAX_BATCH,
    PERFORMANCE_LOGGER,
    SECURITY_LOGGER,
)
from .log.formatting import ConsoleFormatter, JsonFormatter
from .log.records import FlatFields, StructuredEvent, finish_record
from .log.setup import _state, configure_logging, flush_logs, shutdown_logging, sink_status
from .log.sinks import SafeRotatingFileHandler

__all__ = [
    "BATCH_LINGER_SECONDS",
    "CONTEXT_FIELDS",
    "DROP_MEMORY_SECONDS",
    "LOG_FILES",
    "MAX_BATCH",
    "PERFORMANCE_LOGGER",
    "SECURITY_LOGGER",
    "BatchingListener",
    "ConsoleFormatter",
    "ContextQueueHandler",
    "FlatFields",
    "JsonFormatter",
    "LogQueue",
    "SafeRotatingFileHandler",
    "StructuredEvent",
    "_state",
    "bind_cleaned_log_context",
    "bind_log_context",
    "clear_log_context",
    "configure_logging",
    "current_log_context",
    "finish_record",
    "flush_logs",
    "log_context",
    "log_performance_metric",
    "log_security_event",
    "peek_log_context",
    "shutdown_logging",
    "sink_status",
]
