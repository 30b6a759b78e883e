"""What a queued record holds and how it is finished for writing: frozen extras, redaction, structured events."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple

from .fields import _RESERVED, _SCALARS
from .redaction import MASK, clean_text, is_secret_key, redact, redact_value


class FlatFields(dict[str, Any]):
    """A flat dict of scalars (request headers) given to a log helper: queued as is, redacted by the writer.

    The caller hands it over: it must be fresh and never changed afterwards. Plain dicts are copied
    (and nested ones redacted) on the calling thread instead.
    """


# What the writer redacts: scalars and flat copies (everything else was redacted when frozen).
_QUEUEABLE = _SCALARS | {FlatFields}


def _frozen(key: str, value: Any) -> Any:
    """An extra's value as the writer may read it later: a copy nothing the caller does can change."""
    if type(value) is dict and _SCALARS.issuperset(map(type, value.values())):
        return FlatFields(value)
    return redact_value(key, value)  # nested or unknown values: a redacted copy now


def _redacted(key: str, value: Any) -> Any:
    """An extra's value as it may be written: scalars and shallow header copies redacted now."""
    kind = type(value)
    if kind is str:  # most values: redact_value's own first case, without the call
        return MASK if is_secret_key(key) else clean_text(value)
    if kind in _QUEUEABLE:
        return redact_value(key, value)
    return value  # containers were redacted when the record was frozen


def finish_record(record: logging.LogRecord) -> None:
    """Redact a prepared record in place and merge its context, for handlers other than the files.

    The file sinks' formatter does the same while it writes (`JsonFormatter.add_fields`); other
    handlers (the development console) format the record themselves and need it finished first.
    """
    fields = record.__dict__
    fields["msg"] = fields["message"] = clean_text(record.message)
    for key in fields.keys() - _RESERVED:
        if key[0] != "_":
            fields[key] = _redacted(key, fields[key])
    raw = fields.pop("_traceback", None)
    if raw is not None:
        fields["traceback"] = redact(raw)
    raw = fields.pop("_stack", None)
    if raw is not None:
        fields["stack"] = redact(raw)
    context = fields.pop("_context", None)
    if context:
        for key, value in context.items():
            if fields.get(key) is None:  # an explicit extra wins over the bound context
                fields[key] = value


# LogRecord attributes of the records `_emit` builds itself, with the values `makeRecord` gives
# when there is no caller to look up (thread and process names are left out, as with
# `logging.logThreads`/`logMultiprocessing` off: no line shows them).
_BUILT_RECORD_DEFAULTS: dict[str, Any] = {
    "args": None,
    "pathname": "(unknown file)",
    "filename": "(unknown file)",
    "module": "(unknown file)",
    "lineno": 0,
    "funcName": "(unknown function)",
    "exc_info": None,
    "exc_text": None,
    "stack_info": None,
    "threadName": None,
    "processName": None,
    "taskName": None,
}
_LOADED_AT = time.time()
_LEVEL_NAMES = {level: logging.getLevelName(level) for level in (10, 20, 30, 40, 50)}


class StructuredEvent(NamedTuple):
    """What `_emit` queues for a structured event: the writer makes the log record (`as_record`)."""

    name: str
    level: int
    message: str
    extra: dict[str, Any]  # owned by the event; container values already frozen
    context: dict[str, Any] | None
    created: float
    thread: int

    def as_record(self) -> logging.LogRecord:
        """The record `ContextQueueHandler.prepare` would have queued for this event."""
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(_BUILT_RECORD_DEFAULTS)
        created = self.created
        fields.update(
            name=self.name,
            msg=self.message,
            message=self.message,
            levelno=self.level,
            levelname=_LEVEL_NAMES.get(self.level) or logging.getLevelName(self.level),
            created=created,
            msecs=int((created - int(created)) * 1000) + 0.0,
            relativeCreated=(created - _LOADED_AT) * 1000,
            thread=self.thread,
            process=os.getpid(),
            _context=self.context,
        )
        fields.update(self.extra)
        return record
