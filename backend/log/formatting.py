"""The line formats: JSON for the files (SPEC section 4), a short readable line for development consoles."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

from .fields import _CONTEXT_SET, _FIXED_FIELDS, _NOT_EXTRA, _NULL_CONTEXT
from .records import _LEVEL_NAMES, StructuredEvent, _redacted
from .redaction import clean_text, redact


class JsonFormatter(OrjsonFormatter):
    """python-json-logger with orjson and the field names of SPEC section 4."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
            timestamp=True,
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        """The fixed fields, the context (null when absent), the extras; redacted on the way.

        Same output as python-json-logger's generic `add_fields` with our renames, in a stable order,
        and it applies what the request thread left to the writer (`ContextQueueHandler.prepare`):
        redaction and neutralisation, the bound context, the traceback. One pass per line: this runs
        for every line on the writer thread. Idempotent on a record `finish_record` already handled.
        """
        attrs = record.__dict__
        _fill_fields(
            log_record,
            record.created,
            record.levelname,
            record.name,
            record.process,
            record.message,
            attrs,
            attrs.get("_context"),
            _NOT_EXTRA,
        )
        raw = attrs.get("_traceback")
        if raw is not None:
            log_record["traceback"] = redact(raw)
        raw = attrs.get("_stack")
        if raw is not None:
            log_record["stack"] = redact(raw)
        log_record.update(message_dict)

    def format_event(self, event: StructuredEvent) -> str:
        """The line for a structured event, without making a `LogRecord` first (same output)."""
        log_data: dict[str, Any] = {}
        level = _LEVEL_NAMES.get(event.level) or logging.getLevelName(event.level)
        pid = os.getpid()
        _fill_fields(
            log_data, event.created, level, event.name, pid, event.message, event.extra, event.context, _CONTEXT_SET
        )
        return self.serialize_log_record(self.process_log_record(log_data))


def _fill_fields(
    log_record: dict[str, Any],
    created: float,
    levelname: str,
    name: str,
    pid: int | None,
    message: str,
    fields: Mapping[str, Any],
    context: Mapping[str, Any] | None,
    not_extra: frozenset[str],
) -> None:
    """Fill a line's fields in their fixed order: `fields` holds the extras (and maybe more, `not_extra`)."""
    log_record["timestamp"] = datetime.fromtimestamp(created, tz=UTC)
    log_record["level"] = levelname
    log_record["logger"] = name
    log_record["pid"] = pid
    log_record["message"] = clean_text(message)
    log_record.update(_NULL_CONTEXT)  # every context field, null when absent, in a fixed order
    if context:  # cleaned when bound; never over a fixed field
        if _FIXED_FIELDS.isdisjoint(context):
            log_record.update(context)
        else:
            log_record.update((k, v) for k, v in context.items() if k not in _FIXED_FIELDS)
    for key, value in fields.items():
        if key in not_extra or key[0] == "_":
            if value is not None and key in _CONTEXT_SET:  # an explicit context field wins over the bound one
                log_record[key] = _redacted(key, value)
        else:
            log_record[key] = _redacted(key, value)


class ConsoleFormatter(logging.Formatter):
    """Readable single lines for development consoles."""

    def format(self, record: logging.LogRecord) -> str:
        """`time level logger [request] message`, with the traceback indented below."""
        rid = getattr(record, "request_id", None) or getattr(record, "job_id", None) or "-"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name} [{rid}] {record.getMessage()}"
        tb = getattr(record, "traceback", None)
        return f"{line}\n{tb.rstrip()}" if tb else line
