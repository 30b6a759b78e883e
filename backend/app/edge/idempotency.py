"""`@idempotent`: a write sent with an `Idempotency-Key` happens once, however often the client retries it.

The semantics (after Stripe's; the README's "Retrying safely: idempotency keys" says the same):

- The key is 1-255 printable ASCII characters, chosen by the client (a UUID v4 is ideal) and scoped
  to the authenticated user: two users never collide. Anything else is 422 VALIDATION_ERROR.
- The first request with a key takes a lock on (user, key) and runs. Its response (status, body and
  the `Content-Type` and `Location` headers) is stored for `IDEMPOTENCY_TTL_SECONDS` (24 h).
- A retry with the same key and the same request gets the stored response byte for byte, with
  `Idempotent-Replayed: true`, and the view does not run again (no second credit, upload or session).
- The same key with a different request (method, path, query and body; a JSON body compared after
  canonicalisation, a multipart body part by part, not by its random boundary) is 422
  IDEMPOTENCY_KEY_REUSED, and nothing runs.
- A retry while the first request still runs is 409 IDEMPOTENCY_REQUEST_IN_PROGRESS with `retry_after`
  and `Retry-After`.
- What is stored: successes, and the 4xx that judge the request itself (400, 404, 413, 415, 422...), which
  a retry of the same request would only repeat. Responses a retry may change release the key instead,
  so the client retries with the same key and the work is attempted again: 5xx, 408/409/425/429, and 402
  (a payment outcome or credit balance: the provider or the balance changes, e.g. after buying credits).
- The lock has a lease (`IDEMPOTENCY_LEASE_SECONDS`, default 60, longer than any of these requests):
  a process that dies mid-request frees the key when the lease ends instead of holding it for ever.

Storage: the database, in every deployment. The `idempotency_keys` table is the one record of every key:
the INSERT that wins its unique constraint on (user_id, key) is the lock, and the row keeps the response.
Why the promise holds by construction, with or without `REDIS_URL` (#13 point 10):

- Every process of the deployment (each gunicorn worker, each machine) reads and writes the same table,
  so a key used in one worker is a replay in every other; and the table is durable, so it survives any
  process, and any Redis outage or restart.
- Every keyed write needs the database anyway (an upload, a render and a checkout each write rows), so
  keeping its key there adds no dependency: with the database down the write fails either way (503
  DATABASE_UNAVAILABLE), and with Redis down nothing here notices.
- Redis is not used for keys at all, not even as an accelerator. Earlier versions kept keys in Redis
  when `REDIS_URL` was set, and that cannot keep the promise: a key recorded only in Redis cannot be
  recognised while Redis is down, and a per-process fallback is not seen by the other workers, so during
  an outage either every keyed write fails (the old 503) or a retry sent to another worker runs again.
  A cache in front of the table could only speed up replays, which are rare (a lost response), while
  adding a second copy to keep right. Measured (PostgreSQL on loopback, through the app, 300 requests a
  run, medians of 7 runs each): a keyed render 12.2 ms with its key in the database against 10.3 ms in
  Redis (9.4 ms without a key), a replay 4.5 ms against 2.8 ms: under 2 ms a request, the price of two
  small commits on the key's own connection.

`IDEMPOTENCY_STORAGE` ("auto" or "database"; "redis" or anything else is logged once and ignored) and
`IDEMPOTENCY_REDIS_TIMEOUT` no longer change anything; they are accepted so old configurations still start.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from flask import Flask, Response, after_this_request, current_app, make_response, request
from flask_jwt_extended import current_user
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import ConflictError, IdempotencyKeyReusedError, ValidationError
from ..extensions import db
from ..models.idempotency import DONE, RUNNING, IdempotencyRecord
from ..request_id import get_request_id
from ..timeutil import as_utc, utcnow

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# A replay has its own X-Request-ID; the body (an error's `request_id` included) is the original's, named here.
ORIGINAL_REQUEST_ID_HEADER = "Idempotent-Original-Request-ID"
MAX_KEY_LENGTH = 255
HEADER_DOC = (
    HEADER,
    "optional, up to 255 characters (a UUID): a retry with the same key and body replays the first response "
    "(`Idempotent-Replayed: true`) instead of doing the work again; see the README",
)
_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
_STORED_HEADERS = ("Content-Type", "Location")
# Responses a retry may change: released, not stored (5xx are released too).
_RETRYABLE_4XX = frozenset({402, 408, 409, 425, 429})


class IdempotencyInProgressError(ConflictError):
    """A request with this Idempotency-Key is still running; retry after `retry_after` seconds."""

    code = "IDEMPOTENCY_REQUEST_IN_PROGRESS"
    recoverable = True


@dataclass(frozen=True)
class StoredResponse:
    """A finished request's response, as replayed."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Claim:
    """What `begin` found: the lock is ours (`token`), or another request's (running or finished)."""

    fingerprint: str
    token: str | None = None  # set when this request holds the lock
    stored: StoredResponse | None = None  # set when the key's request finished
    retry_after: int = 1  # for a running one


class IdempotencyStore(Protocol):
    """Where claims and responses live; every process of the deployment must see the same store."""

    def begin(self, user_id: int, key: str, fingerprint: str) -> Claim:
        """Take the lock for (user, key), or say who has it."""

    def finish(self, user_id: int, key: str, token: str, response: StoredResponse) -> None:
        """Store the response of the request holding `token`."""

    def release(self, user_id: int, key: str, token: str) -> None:
        """Drop the lock of the request holding `token` without storing anything."""


def _in_progress(retry_after: int) -> IdempotencyInProgressError:
    return IdempotencyInProgressError(
        "A request with this Idempotency-Key is still running; retry shortly.",
        details={"header": HEADER},
        retry_after=retry_after,
    )


class SqlIdempotencyStore:
    """Claims in `idempotency_keys`: the INSERT that wins the unique constraint holds the lock."""

    def __init__(self, lease: float, ttl: float, retry_after: int) -> None:
        self.lease = lease
        self.ttl = ttl
        self.retry_after = retry_after
        self._next_purge = 0.0

    def begin(self, user_id: int, key: str, fingerprint: str) -> Claim:
        """INSERT the claim; on a conflict read the row, taking it over only if it expired."""
        self._purge_now_and_then()
        token = uuid.uuid4().hex
        now = utcnow()
        values = {
            "user_id": user_id,
            "key": key,
            "fingerprint": fingerprint,
            "state": RUNNING,
            "token": token,
            "locked_until": now + timedelta(seconds=self.lease),
            "created_at": now,
            "expires_at": now + timedelta(seconds=self.ttl),
        }
        table = IdempotencyRecord.__table__
        # Own connections, committed at once: the lock must be visible to others while the view's session runs.
        for _ in range(3):
            try:
                with db.engine.begin() as conn:
                    conn.execute(insert(table).values(**values))
                return Claim(fingerprint, token=token)
            except IntegrityError:
                pass
            with db.engine.begin() as conn:
                row = conn.execute(select(table).where(table.c.user_id == user_id, table.c.key == key)).first()
                if row is None:
                    continue  # released or purged in between: try the INSERT again
                expired = as_utc(row.expires_at) <= now or (row.state == RUNNING and as_utc(row.locked_until) <= now)
                if not expired:
                    return self._claim_of(row, now)
                # Compare-and-set on the old token: of two takers of an expired claim, one wins.
                taken = conn.execute(
                    update(table).where(table.c.id == row.id, table.c.token == row.token).values(**values)
                ).rowcount
                if taken == 1:
                    logger.info("Idempotency key of user %s taken over after its claim expired", user_id)
                    return Claim(fingerprint, token=token)
        raise _in_progress(self.retry_after)

    def _claim_of(self, row: Any, now: datetime) -> Claim:
        if row.state == DONE:
            stored = StoredResponse(row.status_code, bytes(row.response_body or b""), json.loads(row.response_headers))
            return Claim(row.fingerprint, stored=stored)
        left = (as_utc(row.locked_until) - now).total_seconds()
        return Claim(row.fingerprint, retry_after=max(1, min(self.retry_after, math.ceil(left))))

    def finish(self, user_id: int, key: str, token: str, response: StoredResponse) -> None:
        """Mark the claim done with its response (only if this request still holds it)."""
        table = IdempotencyRecord.__table__
        with db.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.user_id == user_id, table.c.key == key, table.c.token == token)
                .values(
                    state=DONE,
                    status_code=response.status,
                    response_body=response.body,
                    response_headers=json.dumps(response.headers),
                    expires_at=utcnow() + timedelta(seconds=self.ttl),
                )
            )

    def release(self, user_id: int, key: str, token: str) -> None:
        """Delete the claim (only if this request still holds it)."""
        table = IdempotencyRecord.__table__
        with db.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.user_id == user_id, table.c.key == key, table.c.token == token))

    def _purge_now_and_then(self) -> None:
        """Delete expired rows at most every ten minutes per process (expired claims are never read)."""
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + 600
        table = IdempotencyRecord.__table__
        with db.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.expires_at <= utcnow()))


def get_store(app: Flask | None = None) -> IdempotencyStore:
    """The app's store, built on first use from its config: the database, in every deployment."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    store = app.extensions.get("idempotency")
    if store is None:
        cfg = app.config
        storage = str(cfg.get("IDEMPOTENCY_STORAGE") or "auto").strip().lower()
        if storage not in {"auto", "database"}:
            # Not an error: the setting once chose Redis, and an old configuration must still start.
            logger.warning(
                "IDEMPOTENCY_STORAGE=%r is ignored: idempotency keys are always kept in the database", storage
            )
        store = SqlIdempotencyStore(
            lease=float(cfg.get("IDEMPOTENCY_LEASE_SECONDS", 60)),
            ttl=float(cfg.get("IDEMPOTENCY_TTL_SECONDS", 24 * 3600)),
            retry_after=int(cfg.get("IDEMPOTENCY_RETRY_AFTER_SECONDS", 1)),
        )
        app.extensions["idempotency"] = store
    return store


def read_key() -> str | None:
    """The request's Idempotency-Key, validated (None when absent)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise ValidationError(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters (a UUID is ideal).", field=HEADER
        )
    return key


def fingerprint() -> str:
    """SHA-256 of the method, path, query and body (JSON canonicalised; multipart part by part)."""
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}?{request.query_string.decode('latin-1')}\n".encode())
    if request.mimetype == "multipart/form-data":
        # The boundary is random per attempt, so the raw body differs between retries of one upload.
        for name, value in sorted(request.form.items(multi=True)):
            digest.update(f"form {name}={value}\n".encode())
        for name, upload in sorted(request.files.items(multi=True), key=lambda item: item[0]):
            digest.update(f"file {name} {upload.filename} {upload.mimetype}\n".encode())
            for chunk in iter(lambda upload=upload: upload.stream.read(64 * 1024), b""):
                digest.update(chunk)
            upload.stream.seek(0)  # the view reads it again
        return digest.hexdigest()
    raw = request.get_data(cache=True)  # cached: the view parses the same bytes
    if request.is_json:
        # Not JSON after all: hash the bytes as they are; the view answers the 400.
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            raw = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    digest.update(raw)
    return digest.hexdigest()


def _replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status)
    for name, value in stored.headers.items():
        response.headers[name] = value
    response.headers[REPLAYED_HEADER] = "true"
    return response


def idempotent(view: F) -> F:
    """Run `view` once per (user, Idempotency-Key); place it under `@login_required`. No key: runs as usual."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = read_key()
        if key is None:
            return view(*args, **kwargs)
        try:
            fp = fingerprint()
        except RequestEntityTooLarge:
            return view(*args, **kwargs)  # the view refuses it (413) before doing anything to repeat
        user_id = int(current_user.id)
        store = get_store()
        claim = store.begin(user_id, key, fp)  # SQL errors reach the database handler (503 DATABASE_UNAVAILABLE)
        if claim.fingerprint != fp:
            raise IdempotencyKeyReusedError(
                "This Idempotency-Key was already used for a different request; use a new key.",
                details={"header": HEADER},
            )
        if claim.stored is not None:
            return _replay(claim.stored)
        if claim.token is None:
            raise _in_progress(claim.retry_after)
        token = claim.token

        @after_this_request
        def settle(response: Response) -> Response:
            """Store a final response or release the key; runs for error responses too."""
            try:
                if response.status_code >= 500 or response.status_code in _RETRYABLE_4XX:
                    store.release(user_id, key, token)
                else:
                    headers = {h: response.headers[h] for h in _STORED_HEADERS if h in response.headers}
                    headers[ORIGINAL_REQUEST_ID_HEADER] = get_request_id() or ""
                    body = response.get_data()
                    store.finish(user_id, key, token, StoredResponse(response.status_code, body, headers))
            except SQLAlchemyError as exc:
                # The work is done and its answer goes out; the claim lapses with its lease.
                logger.error("Could not settle idempotency key of user %s: %s", user_id, type(exc).__name__)
            return response

        return make_response(view(*args, **kwargs))

    return wrapper  # type: ignore[return-value]
