"""Structured, process-safe, non-blocking JSON logging for the app and its workers (the log layer).

Modules, bottom to top; each imports only the ones before it (and the standard library, python-json-logger,
concurrent-log-handler):
- `fields`: constants (logger names, context fields, log files, batch sizes) and the reserved-name sets.
- `redaction`: secret redaction and log-injection neutralisation (also used by the app's stored texts).
- `context`: the log context bound per request or job (`bind_log_context`, `log_context`...).
- `records`: what a queued record holds and how the writer finishes it (`FlatFields`, `StructuredEvent`).
- `formatting`: the JSON lines of the files and the development console's lines.
- `sinks`: the process-safe rotating files that degrade instead of failing.
- `batching`: the request thread's queue handler, the bounded queue and the writer thread.
- `setup`: `configure_logging`, fork and exit handling, `flush_logs`, `sink_status`.
- `events`: `log_security_event` and `log_performance_metric`, the per-request fast path.

Nothing here imports `backend.app`: importing `backend.app.x` runs `backend/app/__init__.py`, which imports
the logging set-up, so any such import is a circle at start-up (tests/unit/test_layers.py checks it).
`backend/logging_config.py` is the seed's path and re-exports the public names; the app imports the modules.

Design, and why not simpler:
- Request threads never touch the disk and do as little as they can: a `ContextQueueHandler` on
  the root logger freezes a copy of the record (message rendered, mutable extras copied, traceback
  rendered, the log context referenced) and hands it to a bounded queue; `log_security_event` and
  `log_performance_metric`, which run on every request, queue a `StructuredEvent` tuple instead when
  nothing but the queue would see the record. A full queue drops the record and counts it.
- One listener thread per process drains the queue in batches; its formatter redacts secrets,
  neutralises control characters and merges the context while it renders each line (a batch at a
  time, with warm caches), so no line reaches a file unredacted. Each batch is appended to its files
  under one cross-process lock. The files are `concurrent-log-handler` sinks: it locks around every
  write and rotation and reopens a file another process rotated away. The stdlib
  `RotatingFileHandler` loses and tears lines with several processes (SPEC section 10).
- A thread does not survive `fork()`: gunicorn with `--preload` and forking job runners would get a
  queue nobody drains. An at-fork hook gives each child a fresh queue and its own listener.
- Each file sink survives a missing, read-only or full `LOG_DIR`: it records the failure (shown by
  the health endpoint through `sink_status()`), drops and counts lines, and retries every few
  seconds; a line torn by a full disk is terminated before the next one is written.

Layer: log, the bottom one: it imports nothing of backend.app (tests/unit/test_layers.py).
"""
