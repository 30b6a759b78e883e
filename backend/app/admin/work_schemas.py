"""Models of the admin API for work that failed: dead letters, the failed-work inbox, job error history."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..edge.validation import Flag, StrictModel
from ..jobs.dead_letters import ANALYSES
from ..timeutil import as_utc

MAX_DEAD_LETTERS_PER_PAGE = 100


class DeadLetterQuery(BaseModel):
    """Query of `GET /admin/api/monitoring/dead-letters`: filters and the page (an empty parameter is not given)."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = None
    analysis: str | None = None
    since: datetime | None = None
    archived: Flag = False
    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(50, ge=1, le=MAX_DEAD_LETTERS_PER_PAGE)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: object) -> object:
        return {k: v for k, v in data.items() if v != ""} if isinstance(data, dict) else data

    @field_validator("analysis")
    @classmethod
    def _known_analysis(cls, value: str | None) -> str | None:
        if value is not None and value not in ANALYSES:
            raise ValueError(f"must be one of {', '.join(ANALYSES)}")
        return value

    @field_validator("since")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None


class DeadLetterOut(BaseModel):
    """A dead letter in a list: the job, why it died and what to do about it."""

    id: int
    kind: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    failure_analysis: str
    recommended_action: str
    last_error_code: str | None
    last_error_message: str | None
    created_at: str | None
    dead_at: str | None
    archived_at: str | None


class DeadLetterPage(BaseModel):
    """One page of dead letters."""

    items: list[DeadLetterOut]
    total: int
    page: int
    per_page: int


class JobErrorOut(BaseModel):
    """One entry of a job's error history (the real, redacted message)."""

    model_config = ConfigDict(extra="allow")

    attempt: int
    code: str
    kind: str
    message: str
    time: str | None


class DeadLetterDetailOut(DeadLetterOut):
    """A dead letter with its payload, full error history, completed steps and compensations."""

    idempotency_key: str | None
    payload: dict[str, object]
    errors: list[JobErrorOut]
    steps: list[dict[str, object]]
    compensations: list[dict[str, object]]
    updated_at: str | None
    finished_at: str | None


class DeadLetterEnvelope(BaseModel):
    """A dead letter wrapped in `dead_letter`."""

    dead_letter: DeadLetterDetailOut


class DeadLetterRequeueRequest(StrictModel):
    """Which dead letters to requeue: at least one filter."""

    kind: str | None = Field(default=None, max_length=100)
    analysis: str | None = Field(default=None, pattern="^(transient|data_issue|system_issue|permanent)$")
    since: str | None = Field(default=None, max_length=40, description="ISO-8601 time: died at or after")
    limit: int = Field(default=100, ge=1, le=1000)


class DeadLetterActionOut(BaseModel):
    """The jobs a dead-letter action changed."""

    message: str
    job_ids: list[int]


# --- Failed-work inbox (monitoring) ------------------------------------------------------------------


class FailedWorkQuery(BaseModel):
    """Query of GET .../failed-work (an unknown or malformed parameter is a 422, never a silent default)."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(default=None, min_length=1, max_length=32)
    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=50, ge=1, le=100)


class FailedWorkItemOut(BaseModel):
    """One item of the failed-work inbox: what it is, its real error, how long it has waited."""

    kind: str
    id: int
    title: str
    status: str = Field(description="failed (in the inbox), discarded, or archived (a job the TTL archived)")
    error_code: str | None
    error_message: str | None
    created_at: str | None
    failed_at: str | None
    age_seconds: int
    attempts: int


class FailedWorkPage(BaseModel):
    """One page of the inbox (oldest failure first) and its size by kind."""

    items: list[FailedWorkItemOut]
    totals: dict[str, int]
    oldest: dict[str, str | None]
    total: int
    kind: str | None
    page: int
    per_page: int


class FailedWorkHistoryOut(BaseModel):
    """One entry of an item's history: a failed attempt, or an admin's retry or discard."""

    model_config = ConfigDict(extra="allow")

    code: str | None = None
    kind: str | None = None
    message: str | None = None
    time: str | None = None


class FailedWorkDetailOut(FailedWorkItemOut):
    """An item with its full history and its source's details (secrets masked)."""

    history: list[FailedWorkHistoryOut]
    details: dict[str, object]


class FailedWorkEnvelope(BaseModel):
    """An item wrapped in `item`."""

    item: FailedWorkDetailOut


class FailedWorkDiscardRequest(StrictModel):
    """Why the work is given up (kept with the item and written to security.log)."""

    reason: str = Field(min_length=1, max_length=500)


class FailedWorkRetryAllRequest(StrictModel):
    """Retry every item of one kind, oldest first, at most `limit`."""

    limit: int = Field(default=100, ge=1, le=1000)


class FailedWorkActionOut(BaseModel):
    """The items an inbox action changed."""

    message: str
    kind: str
    ids: list[int]
