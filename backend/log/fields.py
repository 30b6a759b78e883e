"""The log layer's constants: logger names, context fields, file names, batch limits, reserved names."""

from __future__ import annotations

import errno
import logging

SECURITY_LOGGER = "oriel.security"
PERFORMANCE_LOGGER = "oriel.performance"
CONTEXT_FIELDS = ("request_id", "job_id", "trace_id", "user_id", "method", "path", "endpoint", "remote_addr")
LOG_FILES = ("app.log", "errors.log", "security.log", "performance.log")
# LogRecord attributes that are not "extra" fields supplied by the caller.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_CONTEXT_SET = frozenset(CONTEXT_FIELDS)
_NULL_CONTEXT: dict[str, None] = dict.fromkeys(CONTEXT_FIELDS)
_FIXED_FIELDS = frozenset({"timestamp", "level", "logger", "pid", "message"})
_NOT_EXTRA = _RESERVED | _CONTEXT_SET
# Extra values that cannot change after the call: the request thread queues them as they are.
_SCALARS = frozenset({str, int, float, bool, type(None)})
# Lines written per lock acquisition at most; a file may pass maxBytes by up to one batch.
MAX_BATCH = 1024
# How long the writer waits for more records after the first one of a batch. Each batch costs a
# lock, a stat and a write per file and a wake-up, and every wake-up of this thread takes the GIL
# from busy request threads: under load, 0.5 s batches cost a gunicorn worker measurably less than
# 0.1 s ones (4% of a 401's CPU in one run). The price: a process killed with SIGKILL loses up to
# half a second of lines (any exit that runs atexit writes them). `flush_logs` and `stop` cut the
# wait short, so tests and shutdown never wait for it.
BATCH_LINGER_SECONDS = 0.5
# Logger name and level pairs whose sinks are remembered (names are module names: a bounded set).
_MAX_ROUTES = 4096
# Write failures that an open() probe cannot see past: the disk (or the file size limit) is full.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# A queue drop older than this no longer marks logging as degraded.
DROP_MEMORY_SECONDS = 60.0
