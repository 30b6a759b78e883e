"""File storage: Google Cloud Storage with a local fallback that is synced back, or plain local storage.

Backends (`STORAGE_BACKEND`, default "gcs" when `GCS_BUCKET` is set, else "local"):

- "gcs": google-cloud-storage with an explicit `timeout=` (GCS_TIMEOUT) and `retry=None` on every
  call: the SDK's default retry hangs 110-120 s against a dead server (SPEC section 10), so the
  `storage` breaker and our retry layer decide instead. When the bucket fails (breaker open, or
  retries exhausted) `save` writes the file to local fallback storage, records it in
  `storage_pending_sync`, and says `degraded=True`; `sync_pending()` uploads those files when the
  bucket is back (idempotently: an object upload of the same bytes to the same key is a no-op).
- "local": the files live in `LOCAL_STORAGE_DIR` (default `<instance>/storage`). This is the
  embedded mode for one machine and `make run`: configured on purpose, reported by `status()` as
  backend "local", never as degraded. It is not a pretend bucket: files are really stored and served.

Downloads: a v4 signed URL for objects in the bucket (signed offline with the service-account key
in `GCS_SIGNING_CREDENTIALS_FILE`, or the client's own credentials when they can sign), or an
app-signed, expiring URL (`/api/files/<token>`) for local files.

The sync of fallback files to the bucket (`sync_pending`) lives in `storage_sync.py`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app, has_request_context, url_for
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import APIError, NotFoundError, StorageError, UpstreamRejectedError, ValidationError
from ..extensions import db
from ..models.outbox import SYNC_FAILED, SYNC_PENDING, SYNC_SYNCED, PendingSync
from ..resilience.classifier import classify
from ..resilience.recovery import call_with_recovery, get_breaker
from ..resilience.retry import RetryPolicy
from ..timeutil import utcnow
from .replay import Failure

logger = logging.getLogger(__name__)

SERVICE = "storage"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_TOKEN_SALT = "oriel-storage-download"


@dataclass(frozen=True)
class StoredObject:
    """Where `save` put a file: `location` is "bucket" or "local"; `degraded` when a fallback served."""

    key: str
    location: str
    degraded: bool
    size: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (what upload responses embed)."""
        return {"key": self.key, "location": self.location, "degraded": self.degraded, "size": self.size}


def check_key(key: str) -> str:
    """`key` if it is a safe relative object name (no `..`, no absolute path), else a 422."""
    if len(key) > 512 or not _KEY.fullmatch(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValidationError("Invalid storage key.", field="key")
    return key


def translate_storage_error(exc: BaseException) -> APIError:
    """Our error for a failed bucket call (the adapter's one translation table).

    A refusal of our credentials never reaches here (`with_error_recovery` makes it SERVICE_MISCONFIGURED);
    any other permanent refusal (400: our request was wrong) is UPSTREAM_REJECTED; the rest is an outage.
    """
    verdict = classify(exc)
    if not verdict.retryable:
        return UpstreamRejectedError(
            "File storage refused this server's request; this is not your fault. Quote the request ID.",
            details={"service": SERVICE},
        )
    return StorageError(
        "File storage is unavailable right now. Retry later.",
        details={"service": SERVICE, "reason": verdict.kind.value},
        recoverable=verdict.retryable,
        retry_after=verdict.retry_after,  # a throttled bucket's Retry-After: the job retrying the call waits it
    )


def peer_said(exc: BaseException | None) -> str | None:
    """What the bucket said about a failed call: its HTTP status and message (Google's errors), else the error."""
    if exc is None:
        return None
    status = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if isinstance(status, int) and isinstance(message, str):  # google.api_core GoogleAPICallError
        return f"HTTP {status}: {message}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class StorageService:
    """Save, read and link files; see the module docstring for the backends and the fallback."""

    def __init__(
        self,
        *,
        backend: str,
        local_dir: str | os.PathLike[str],
        bucket: str | None = None,
        endpoint: str | None = None,
        project: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        signing_credentials_file: str | None = None,
        signing_credentials: Any = None,
        client: Any = None,
        sync_policy: RetryPolicy | None = None,
        sync_lease_seconds: float = 300.0,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if backend not in {"gcs", "local"}:
            raise ValueError(f"STORAGE_BACKEND must be 'gcs' or 'local', got {backend!r}")
        self.backend = backend
        self.local_dir = Path(local_dir)
        self.bucket_name = bucket
        self.endpoint = endpoint
        self.project = project
        self.timeout = timeout
        self.max_retries = max_retries
        self._signing_file = signing_credentials_file
        self._signing = signing_credentials
        self._client = client
        # Per-file backoff and attempt limit of the sync: the jobs' policy, so files fail like jobs do.
        self.sync_policy = sync_policy or RetryPolicy(max_attempts=10, base_delay=60.0, max_delay=3600.0)
        # A claimed row is not due again before this: longer than one upload with its retries can take.
        self.sync_lease = dt.timedelta(seconds=sync_lease_seconds)
        self.sync_rng = rng  # the jitter of the sync's backoff (injectable: tests check the cap)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, instance_path: str) -> StorageService:
        """Build from app config (nothing connects until the first call)."""
        bucket = config.get("GCS_BUCKET") or None
        backend = (config.get("STORAGE_BACKEND") or ("gcs" if bucket else "local")).lower()
        return cls(
            backend=backend,
            local_dir=config.get("LOCAL_STORAGE_DIR") or os.path.join(instance_path, "storage"),
            bucket=bucket,
            endpoint=config.get("GCS_ENDPOINT") or config.get("STORAGE_EMULATOR_HOST") or None,
            project=config.get("GCS_PROJECT") or None,
            timeout=float(config.get("GCS_TIMEOUT", 10.0)),
            max_retries=int(config.get("GCS_MAX_RETRIES", 2)),
            signing_credentials_file=config.get("GCS_SIGNING_CREDENTIALS_FILE") or None,
            signing_credentials=config.get("GCS_SIGNING_CREDENTIALS"),
            sync_policy=RetryPolicy(
                max_attempts=int(config.get("STORAGE_SYNC_MAX_ATTEMPTS", 10)),
                base_delay=float(config.get("STORAGE_SYNC_BASE_DELAY", 60.0)),
                max_delay=float(config.get("STORAGE_SYNC_MAX_DELAY", 3600.0)),
            ),
            sync_lease_seconds=float(config.get("STORAGE_SYNC_LEASE_SECONDS", 300.0)),
        )

    # -- public API -------------------------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        """Whether the configured backend can work (the gcs backend needs a bucket)."""
        return self.backend == "local" or bool(self.bucket_name)

    def save(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store `data` under `key`: in the bucket, or locally (configured, or as a degraded fallback)."""
        check_key(key)
        if self.backend == "local":
            self._write_local(key, data)
            return StoredObject(key, "local", False, len(data))
        self._require_bucket()
        stored: StoredObject = call_with_recovery(
            self._upload,
            (key, data, content_type),
            {},
            service=SERVICE,
            operation="upload",
            max_retries=self.max_retries,
            idempotent=True,  # the same bytes to the same key: repeating it changes nothing
            fallback=self._save_fallback,
            translate=translate_storage_error,
        )
        if stored.location == "bucket":
            self._retire_local_copy(key)
        return stored

    def download_url(self, key: str, expires_in: int = 3600) -> str:
        """A URL that downloads `key` for `expires_in` seconds: GCS signed URL, or an app-signed local one."""
        check_key(key)
        if self.backend == "local" or self._pending(key):
            if not self._local_path(key).is_file():
                raise NotFoundError("No such file.", details={"key": key})
            return self._local_url(key, expires_in)
        self._require_bucket()
        blob = self._bucket().blob(key)
        signer = self._signing_credentials()
        if signer is None and not hasattr(self._client_instance()._credentials, "sign_bytes"):
            raise StorageError(
                "Download links are not configured on this server (set GCS_SIGNING_CREDENTIALS_FILE).",
                code="SERVICE_NOT_CONFIGURED",
                details={"service": SERVICE},
            )
        options: dict[str, Any] = {
            "version": "v4",
            "expiration": dt.timedelta(seconds=expires_in),
            "method": "GET",
            "credentials": signer,
        }
        if self.endpoint:
            options["api_access_endpoint"] = self.endpoint
        return blob.generate_signed_url(**options)  # signed offline: no network call

    def read(self, key: str) -> bytes:
        """The bytes stored under `key` (local copy first, then the bucket)."""
        check_key(key)
        path = self._local_path(key)
        if self.backend == "local" or self._pending(key):
            if not path.is_file():
                raise NotFoundError("No such file.", details={"key": key})
            return path.read_bytes()
        self._require_bucket()
        data = call_with_recovery(
            self._download,
            (key,),
            {},
            service=SERVICE,
            operation="download",
            max_retries=self.max_retries,
            idempotent=True,
            translate=translate_storage_error,
        )
        if data is None:
            raise NotFoundError("No such file.", details={"key": key})
        return data

    def exists(self, key: str) -> bool:
        """Whether `key` is stored (locally or in the bucket)."""
        check_key(key)
        if self.backend == "local" or self._pending(key):
            return self._local_path(key).is_file()
        self._require_bucket()
        return call_with_recovery(
            lambda: self._bucket().blob(key).exists(timeout=self.timeout, retry=None),
            (),
            {},
            service=SERVICE,
            operation="exists",
            max_retries=self.max_retries,
            idempotent=True,
            translate=translate_storage_error,
        )

    def sync_pending(self, limit: int = 100) -> int:
        """Upload up to `limit` due fallback files to the bucket, one claimed row at a time; the number uploaded.

        A file that fails backs off (or ends `failed`) and the others go on; only an open breaker ends the run
        (see `storage_sync.py`).
        """
        if self.backend != "gcs" or not self.bucket_name:
            return 0
        from .storage_sync import StorageSync

        return StorageSync(self).run(limit)

    def pending_sync_count(self) -> int:
        """Files in local fallback storage waiting for the bucket (due or backing off; not the failed ones)."""
        return self._count_sync(SYNC_PENDING)

    def failed_sync_count(self) -> int:
        """Files that could not reach the bucket and wait in the failed-work inbox."""
        return self._count_sync(SYNC_FAILED)

    def _count_sync(self, status: str) -> int:
        return int(db.session.scalar(select(func.count()).where(PendingSync.status == status)) or 0)

    def status(self) -> dict[str, Any]:
        """Backend, configured or not, bucket, breaker state, pending and failed sync counts (no network call)."""
        info: dict[str, Any] = {
            "service": SERVICE,
            "backend": self.backend,
            "configured": self.configured,
            "location": "bucket" if self.backend == "gcs" else "local",
            "bucket": self.bucket_name,
            "breaker": get_breaker(SERVICE).state.value,
        }
        if not self.configured:
            info["reason"] = "STORAGE_BACKEND is gcs but GCS_BUCKET is not set"
        if self.backend == "gcs":
            info["pending_sync"] = self.pending_sync_count()
            info["failed_sync"] = self.failed_sync_count()
        return info

    def probe(self, timeout: float = 2.0) -> dict[str, Any]:
        """A live check for the health endpoint: the bucket answers (gcs), or the directory is writable (local).

        It calls the SDK directly, outside the breaker: a health check must see the service, not the breaker's
        memory of it. Failures raise (the health prober reports their type).
        """
        info = {"configured": self.configured, "backend": self.backend}
        if self.backend == "local":
            self.local_dir.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.local_dir, os.W_OK)
            return {**info, "status": "ok" if writable else "error"}
        if not self.configured:
            return {**info, "status": "not_configured"}
        found = self._bucket().exists(timeout=min(timeout, self.timeout), retry=None)
        return {**info, "status": "ok" if found else "error", "bucket_exists": found}

    # -- the bucket -------------------------------------------------------------------------------------------

    def _require_bucket(self) -> None:
        if not self.bucket_name:
            raise StorageError(
                "File storage is not configured on this server (GCS_BUCKET is not set).",
                code="SERVICE_NOT_CONFIGURED",
                details={"service": SERVICE},
            )

    def _client_instance(self) -> Any:
        if self._client is None:
            from google.cloud import storage  # the SDK only when the bucket is used

            options: dict[str, Any] = {}
            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                # An emulator (or a local endpoint) takes no credentials; real GCS uses ADC.
                options = {"credentials": AnonymousCredentials(), "client_options": {"api_endpoint": self.endpoint}}
            project = self.project or ("oriel-local" if self.endpoint else None)  # real GCS: from ADC
            client = storage.Client(project=project, **options)
            # google-cloud-storage 3.17 starts a tracing thread per bucket that GETs its metadata with the
            # default ~2 minute retry (SPEC section 10); it only feeds trace attributes, so switch it off.
            client._bucket_metadata_cache = None
            self._client = client
        return self._client

    def _bucket(self) -> Any:
        return self._client_instance().bucket(self.bucket_name)

    def _upload(self, key: str, data: bytes, content_type: str) -> StoredObject:
        self._bucket().blob(key).upload_from_string(data, content_type=content_type, timeout=self.timeout, retry=None)
        return StoredObject(key, "bucket", False, len(data))

    def sync_upload(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Upload one fallback file for the sync: guarded like `save`, but no fallback (it replays the fallback)."""
        return call_with_recovery(
            self._upload,
            (key, data, content_type),
            {},
            service=SERVICE,
            operation="sync_upload",
            max_retries=self.max_retries,
            idempotent=True,
            translate=translate_storage_error,
        )

    def _download(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return self._bucket().blob(key).download_as_bytes(timeout=self.timeout, retry=None)
        except NotFound:
            return None  # an answer, not an outage: the breaker must not count it

    def _signing_credentials(self) -> Any:
        if self._signing is None and self._signing_file:
            from google.oauth2 import service_account

            self._signing = service_account.Credentials.from_service_account_file(self._signing_file)
        return self._signing  # None: the client's own credentials sign (real GCS service accounts)

    # -- local files ------------------------------------------------------------------------------------------

    def _local_path(self, key: str) -> Path:
        return self.local_dir.joinpath(*check_key(key).split("/"))

    def local_file(self, key: str) -> Path:
        """Where `key` lives in local (fallback) storage, whether or not the file is there."""
        return self._local_path(key)

    def _write_local(self, key: str, data: bytes) -> None:
        path = self._local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file, a crash leaves no truncated one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _save_fallback(self, exc: BaseException, key: str, data: bytes, content_type: str) -> StoredObject:
        """The fallback: keep the file locally and queue it for the bucket (nothing is lost)."""
        self._write_local(key, data)
        error = exc if isinstance(exc, APIError) else translate_storage_error(exc)
        if error is not exc:
            error.__cause__ = exc
        reason = Failure.of(error, None if error is exc else peer_said(exc)).last_error
        row = db.session.scalar(select(PendingSync).where(PendingSync.key == key))
        if row is None:
            db.session.add(PendingSync(key=key, content_type=content_type, size=len(data), last_error=reason))
        else:
            # Saved again (pending, synced, failed or discarded): new bytes are new work, due now with every
            # attempt; the history stays. A sync holding the old lease can no longer mark it synced.
            row.content_type, row.size, row.last_error, row.attempts = content_type, len(data), reason, 0
            row.status, row.synced_at, row.next_attempt_at, row.failed_at = SYNC_PENDING, None, None, None
            row.discarded_at, row.discard_reason = None, None
        try:
            db.session.commit()
        except IntegrityError:  # a concurrent save of the same key queued it first: it will upload the file
            db.session.rollback()
        logger.warning("Stored %s locally (bucket unavailable: %s); queued for sync", key, reason)
        return StoredObject(key, "local", True, len(data))

    def _retire_local_copy(self, key: str) -> None:
        """The bucket has the newest bytes of `key`: an older fallback copy must never be synced over them."""
        retired = db.session.execute(
            update(PendingSync)
            .where(PendingSync.key == key, PendingSync.status.in_((SYNC_PENDING, SYNC_FAILED)))
            .values(status=SYNC_SYNCED, synced_at=utcnow(), next_attempt_at=None, failed_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        if retired:
            self._local_path(key).unlink(missing_ok=True)
            logger.info("Saved %s to the bucket directly; its older fallback copy is retired, not synced", key)

    def _pending(self, key: str) -> bool:
        row = db.session.scalar(select(PendingSync.id).where(PendingSync.key == key, PendingSync.synced_at.is_(None)))
        return row is not None

    def _local_url(self, key: str, expires_in: int) -> str:
        token = self._serializer().dumps({"k": key, "e": int(time.time()) + int(expires_in)})
        if has_request_context():
            return url_for("downloads.download_file", token=token, _external=True)
        base = current_app.config.get("PUBLIC_BASE_URL") or ""
        return f"{base.rstrip('/')}/api/files/{token}"

    @staticmethod
    def _serializer() -> URLSafeSerializer:
        return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=_TOKEN_SALT)

    def open_download(self, token: str) -> tuple[Path, str]:
        """The local file an app-signed token grants, and its key; 404 when invalid or expired."""
        try:
            claims = self._serializer().loads(token)
        except BadSignature as exc:
            raise NotFoundError("This download link is invalid.", code="NOT_FOUND") from exc
        key = claims.get("k") if isinstance(claims, dict) else None
        expires = claims.get("e") if isinstance(claims, dict) else None
        if not isinstance(key, str) or not isinstance(expires, int):
            raise NotFoundError("This download link is invalid.")
        if expires < time.time():
            raise NotFoundError("This download link has expired; ask for a new one.", details={"expired": True})
        path = self._local_path(key)
        if not path.is_file():
            raise NotFoundError("No such file.", details={"key": key})
        return path, key
