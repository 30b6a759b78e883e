"""What a replay (the storage sync, the email outbox) records when one row's attempt fails.

The recorded error is the real one: the code of the `APIError` the adapter raised
(SERVICE_MISCONFIGURED, UPSTREAM_REJECTED, STORAGE_UNAVAILABLE...), its message with what the peer
said (its status and its own words), and the classifier's verdict on the cause, the SDK error the
APIError was raised from (a 403 is permanent and misconfigured even though the APIError is ours).
History entries have the shape of a job's error history (`resilience.history.error_entry`: attempt, code,
kind, reason, message, time, status), redacted and bounded the same way, so the failed-work inbox
shows jobs, emails and files alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...log.redaction import redact
from ..errors import APIError
from ..resilience.classifier import Classification, classify
from ..resilience.history import append_error, error_entry

LAST_ERROR_CHARS = 500  # the `last_error` column's size
PEER_CHARS = 300  # what the peer said, in a message: enough for its sentence, never a whole body


@dataclass(frozen=True)
class Failure:
    """One failed attempt of one row: our code, the real message, and the verdict on its cause."""

    code: str
    message: str
    verdict: Classification
    exc: BaseException | None = None

    @classmethod
    def of(cls, error: APIError, peer: str | None = None) -> Failure:
        """The failure an adapter's `error` stands for; `peer` is what the peer said (added once)."""
        cause = error.__cause__ if isinstance(error.__cause__, BaseException) else None
        verdict = classify(cause) if cause is not None else classify(error)
        message = error.message
        if peer and peer not in message:
            message = f"{message} The peer said: {peer[:PEER_CHARS]}"
        return cls(error.code, message, verdict, cause or error)

    @property
    def last_error(self) -> str:
        """`CODE: message`, redacted, as the row's `last_error` column keeps it."""
        return redact(f"{self.code}: {self.message}")[:LAST_ERROR_CHARS]

    @property
    def permanent(self) -> bool:
        """Whether waiting cannot help (a refusal: misconfigured or rejected)."""
        return not self.verdict.retryable

    def entry(self, attempt: int, at: datetime) -> dict[str, Any]:
        """This failure as an error-history entry (the job history's shape, redacted)."""
        entry = error_entry(self.exc, self.verdict, attempt, at, worker=None, code=self.code, message=self.message)
        if self.verdict.misconfigured:
            entry["misconfigured"] = True
        if self.verdict.ambiguous:
            entry["ambiguous"] = True
        return entry

    def appended_to(self, history: Iterable[dict[str, Any]] | None, attempt: int, at: datetime) -> list[dict[str, Any]]:
        """`history` with this failure added, bounded like a job's."""
        return append_error(history or [], self.entry(attempt, at))
