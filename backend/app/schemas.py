"""Request and response models shared by the API blueprints and the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class StrictModel(BaseModel):
    """Rejects unknown fields so typos are reported, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RegisterRequest(StrictModel):
    """New account."""

    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=8, max_length=128)


class VerifyAdminRequest(StrictModel):
    """The emailed admin verification token and the password the mailbox owner chooses."""

    token: str = Field(min_length=1, max_length=1000)
    password: str = Field(min_length=8, max_length=128)


class LoginRequest(StrictModel):
    """Credentials."""

    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=1, max_length=128)


class UserOut(BaseModel):
    """The public view of a user."""

    id: int
    email: str
    is_admin: bool
    created_at: str | None


class UserEnvelope(BaseModel):
    """A user wrapped in `user`."""

    user: UserOut


class TokenPair(BaseModel):
    """Access and refresh tokens."""

    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int


class AccessToken(BaseModel):
    """A fresh access token."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class Message(BaseModel):
    """A plain acknowledgement."""

    message: str


class CatalogEntryOut(BaseModel):
    """One error code of the catalog."""

    code: str
    status: int
    meaning: str
    recoverable: bool


class CatalogOut(BaseModel):
    """The error catalog."""

    errors: list[CatalogEntryOut]


class HealthCheckOut(BaseModel):
    """Basic health."""

    status: str
    timestamp: str
    checks: dict[str, str]


# --- Error statistics (monitoring) ---------------------------------------------------------------

ContextValue = Annotated[str, Field(max_length=500)] | int | float | bool | None


class ClientErrorReport(StrictModel):
    """An error a browser client reports (sanitised before it is stored)."""

    message: str = Field(min_length=1, max_length=4000)
    error_type: str | None = Field(default=None, max_length=128, description="e.g. TypeError")
    code: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    status: int | None = Field(default=None, ge=100, le=599, description="HTTP status of a failed API call")
    request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    stack: str | None = Field(default=None, max_length=8000)
    url: str | None = Field(default=None, max_length=2048)
    user_agent: str | None = Field(default=None, max_length=512)
    release: str | None = Field(default=None, max_length=64)
    context: dict[Annotated[str, Field(max_length=64)], ContextValue] = Field(default_factory=dict, max_length=20)


class ErrorReportAccepted(BaseModel):
    """A client report was accepted for recording."""

    status: str = "accepted"
    event_id: str


class GroupStatusRequest(StrictModel):
    """The new triage status of an error group."""

    status: Literal["acknowledged", "resolved", "unresolved"] = "acknowledged"


class ErrorGroupOut(BaseModel):
    """One error group (every event with the same fingerprint)."""

    id: int
    fingerprint: str
    source: str
    code: str
    title: str
    exc_type: str | None
    endpoint: str | None
    frames: list[str]
    category: str
    severity: str
    status_code: int | None
    count: int
    count_24h: int | None
    first_seen: str | None
    last_seen: str | None
    status: str
    regressed: bool


class ErrorGroupEnvelope(BaseModel):
    """A group wrapped in `group`."""

    status: str = "success"
    group: ErrorGroupOut


class ErrorEventOut(BaseModel):
    """One recorded error event."""

    event_id: str
    group_id: int
    occurred_at: str | None
    source: str
    code: str
    status_code: int | None
    category: str
    severity: str
    message: str
    exc_type: str | None
    endpoint: str | None
    method: str | None
    path: str | None
    request_id: str | None
    user_id: int | None


class RecentErrorsOut(BaseModel):
    """A page of events, newest first; pass `next_cursor` as `cursor` for the next page."""

    events: list[ErrorEventOut]
    next_cursor: str | None


class RequestFactsOut(BaseModel):
    """What a traced request was: from its performance.log line, else from its first error event."""

    request_id: str
    source: Literal["performance.log", "error_events"]
    at: str | None
    method: str | None
    path: str | None
    endpoint: str | None
    status: int | None
    duration_ms: float | None
    user_id: int | None
    error_code: str | None


class TraceJobErrorOut(BaseModel):
    """A job's last error."""

    code: str
    message: str | None


class TraceJobOut(BaseModel):
    """A job the traced request started, with its error history."""

    id: int
    kind: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    user_id: int | None
    payload: dict[str, Any]
    last_error: TraceJobErrorOut | None
    errors: list[dict[str, Any]]
    failure_analysis: str | None
    created_at: str | None
    finished_at: str | None
    next_attempt_at: str | None


class TraceEventOut(ErrorEventOut):
    """An error event of the traced request or of its jobs (`context` names the job and attempt)."""

    context: Any = None


class TraceLogsOut(BaseModel):
    """The log lines that carry the request id, earliest first, from a bounded read of `logs/*.log`."""

    lines: list[dict[str, Any]]
    matched: int
    truncated: bool
    files: list[dict[str, Any]]
    max_lines: int
    max_bytes_per_file: int


class RequestTraceOut(BaseModel):
    """Everything that carries one request id: the request, its jobs, their errors, groups and log lines."""

    request_id: str
    request: RequestFactsOut | None
    jobs: list[TraceJobOut]
    error_events: list[TraceEventOut]
    error_groups: list[ErrorGroupOut]
    logs: TraceLogsOut


class ErrorTotalsOut(BaseModel):
    """All-time totals over every group."""

    errors: int
    groups: int
    unresolved: int
    acknowledged: int
    resolved: int
    regressed: int


class CodeCountOut(BaseModel):
    """Events of one code: all time and in the last 24 hours."""

    total: int
    last_24h: int


class RateWindowOut(BaseModel):
    """Errors (and requests) over a trailing window."""

    minutes: int
    errors: int
    requests: int
    errors_per_minute: float
    error_ratio: float | None
    server_errors: int  # 5xx and failures outside a request (jobs)
    server_error_ratio: float | None
    client_errors: int  # 4xx: the caller's mistakes (not found, invalid, expired token)
    client_error_ratio: float | None


class WriterStatusOut(BaseModel):
    """The answering process's event writer."""

    pending: int
    dropped: int
    failed_flushes: int
    sampled_out: int  # 4xx events counted in the rollups whose raw row this process did not keep


class ClientReportsOut(BaseModel):
    """What browser clients reported: counted apart, never as server errors."""

    reports: int
    groups: int
    last_24h: int
    by_code: dict[str, int]
    top_groups: list[ErrorGroupOut]


class ErrorStatsOut(BaseModel):
    """Server error statistics from the groups and rollups, and the client reports beside them."""

    generated_at: str | None
    totals: ErrorTotalsOut
    by_code: dict[str, CodeCountOut]
    by_category: dict[str, int]
    by_severity: dict[str, int]
    rates: dict[str, RateWindowOut]
    top_groups: list[ErrorGroupOut]
    client_reports: ClientReportsOut
    writer: WriterStatusOut | None


class ErrorSummaryItemOut(BaseModel):
    """One recent error in the summary."""

    error_id: str
    group_id: int
    code: str
    message: str
    category: str
    severity: str
    timestamp: str | None


class ErrorSummaryDataOut(BaseModel):
    """Seed 004's summary fields."""

    total_errors: int
    error_counts: dict[str, int]
    recent_errors: list[ErrorSummaryItemOut]


class ErrorSummaryOut(BaseModel):
    """The error summary, wrapped as seed 004 shows."""

    status: str
    data: ErrorSummaryDataOut
    timestamp: str


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


class CheckoutRequest(StrictModel):
    """Which render-credit pack to buy."""

    pack: str = Field(min_length=1, max_length=50, examples=["starter"])


class CheckoutOut(BaseModel):
    """Where to send the user to pay: Stripe Checkout's URL and the session id."""

    checkout_url: str
    session_id: str


class WebhookAck(BaseModel):
    """The webhook's acknowledgement: whether the event was new and what it granted or took back."""

    received: bool
    duplicate: bool | None = None
    credits_granted: int | None = None
    debt_settled: int | None = None
    credits_clawed_back: int | None = None
    debt_added: int | None = None
    unapplied: str | None = Field(None, description="Why the event could not be applied (kept for an admin)")
    recorded: str | None = None
    ignored: str | None = None


class CreditsOut(BaseModel):
    """The user's render credits, and the credits they owe after a refund or dispute of spent credits."""

    balance: int
    debt: int = Field(description="Credits owed; renders are refused (402 CREDITS_IN_DEBT) until a pack settles it")


# --- Health, breakers, degradation (monitoring) ------------------------------------------------------


class ProbeOut(BaseModel):
    """A live probe's result: ok, degraded, error, misconfigured, timeout, not_configured or unknown."""

    model_config = ConfigDict(extra="allow")

    status: str
    latency_ms: float | None
    detail: str | None


class BreakerViewOut(BaseModel):
    """A breaker's state as the health report shows it."""

    state: str
    failure_rate: float | None
    calls_in_window: int | None
    failures_in_window: int | None
    retry_after: float | None
    storage: str | None
    opened_at: str | None


class ServiceFaultOut(BaseModel):
    """An open configuration fault: the last permanent refusal of our credentials by one operation."""

    service: str
    operation: str
    code: str
    http_status: int | None
    reason: str
    count: int
    since: str | None
    last_seen: str | None


class ServiceHealthOut(BaseModel):
    """One dependency: configured, live probe, breaker, last success and failure seen by this process."""

    configured: bool
    probe: ProbeOut
    breaker: BreakerViewOut | None
    faults: list[ServiceFaultOut] = Field(default_factory=list)  # open ones; the probe then says misconfigured
    last_success: str | None
    last_failure: str | None


class ServicesHealthOut(BaseModel):
    """Every dependency, the queue, the fallback backlogs and the log sinks."""

    status: Literal["ok", "degraded", "down"]
    timestamp: str
    deadline_seconds: float
    elapsed_ms: float
    services: dict[str, ServiceHealthOut]
    queue: dict[str, object]
    backlog: dict[str, object]
    logs: dict[str, object]
    breaker_storage: str
    service_faults: list[ServiceFaultOut] | None = None  # every open configuration fault; None when unreadable


class LivenessOut(BaseModel):
    """The process is up."""

    status: Literal["alive"]


class ReadinessOut(BaseModel):
    """The process can serve: the database answers."""

    status: Literal["ready"]


class BreakerSnapshotOut(BaseModel):
    """A breaker's full snapshot: state, window counts, retry_after, storage and tuning."""

    model_config = ConfigDict(extra="allow")

    name: str
    state: str
    failure_rate: float
    calls_in_window: int
    failures_in_window: int
    opened_at: float | None
    retry_after: float | None
    storage: str
    config: dict[str, float | int | None]


class BreakerListOut(BaseModel):
    """Every breaker and where their state lives."""

    storage: str
    breakers: dict[str, BreakerSnapshotOut]


class PropagationOut(BaseModel):
    """Where an admin action is shared and how soon every process applies it."""

    shared_through: Literal["redis", "database", "process"]
    within_seconds: float


class BreakerActionOut(BaseModel):
    """The result of an admin action on breakers (the answering process's snapshots)."""

    status: Literal["success"]
    action: str
    breakers: dict[str, BreakerSnapshotOut]
    propagation: PropagationOut


class DegradedServiceOut(BaseModel):
    """One failing dependency from a user's point of view."""

    service: str
    state: str  # the breaker's state, or "not_configured"
    features: list[str]
    fallback_active: bool
    fallback: str | None
    user_impact: str
    retry_after: int | None


class DegradationOut(BaseModel):
    """Open breakers and unconfigured services → affected features, fallbacks, what users should expect."""

    degraded: bool  # an outage (not-configured services alone are not one)
    level: Literal["ok", "degraded", "down"]
    services: list[DegradedServiceOut]


class SystemHealthOut(BaseModel):
    """The public health level and the degraded features only."""

    status: Literal["ok", "degraded", "down"]
    degraded_features: list[str]  # failing now (an outage)
    unavailable_features: list[str]  # not set up on this server (payments without Stripe)


class RateLimitOut(BaseModel):
    """One limit that applies to the caller and what is left of it."""

    endpoint: str
    limit: str
    remaining: int | None
    reset_at: str | None


class RateLimitStatusOut(BaseModel):
    """The caller's own limits (by client address) and what is left, read without consuming."""

    enabled: bool
    limits: list[RateLimitOut]


class NotificationOut(BaseModel):
    """An error that hit the caller (or a system alert, for admins) with the action to take."""

    id: str
    kind: Literal["error", "render", "system"]
    severity: str
    code: str
    title: str
    action: str
    occurred_at: str | None
    request_id: str | None
    render_id: int | None = None  # kind "render": the failed render (GET /api/renders/<id>)


class NotificationsOut(BaseModel):
    """The caller's notifications, newest first."""

    notifications: list[NotificationOut]


# -- Uploads and renders ----------------------------------------------------------------------------------------


class UploadForm(BaseModel):
    """Multipart form of `POST /api/uploads`: the audio file in the field `file`."""

    file: bytes = Field(description="WAV, MP3, OGG, FLAC, M4A or AAC; recognised by content, not by name")


class UploadOut(BaseModel):
    """An uploaded audio file: what it was recognised as and where it went."""

    id: int
    filename: str
    format: str
    content_type: str
    duration_seconds: float
    size: int
    location: Literal["bucket", "local"]
    degraded: bool
    created_at: str | None


class UploadEnvelope(BaseModel):
    """An upload wrapped in `upload`."""

    upload: UploadOut


MAX_PAGE = 100


class PageQuery(BaseModel):
    """Query of the caller's lists (uploads, renders): newest first, `limit` per page, `before` an id.

    Pass a page's `next_before` as `before` for the next one; it is null on the last page. An id cursor
    (not an offset) so a page never repeats or skips rows when new ones arrive meanwhile.
    """

    model_config = ConfigDict(extra="forbid")  # `?limt=5` is a typo to report, not a default to apply

    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    before: int | None = Field(default=None, ge=1, le=2**31 - 1)  # ids are INTEGER, like RenderRequest.upload_id


PAGE_QUERY_DOC = (
    ("limit", "integer", f"How many (1-{MAX_PAGE}, default 50)"),
    ("before", "integer", "Only ids below this one: the previous page's `next_before`"),
)


class UploadList(BaseModel):
    """A page of the caller's uploads, newest first; `next_before` is the `before` of the next page."""

    uploads: list[UploadOut]
    next_before: int | None


class RenderRequest(StrictModel):
    """A render of an uploaded file (one render credit)."""

    upload_id: int = Field(gt=0, le=2**31 - 1)  # uploads.id is INTEGER: a bigger id is invalid, not a 500
    preset: Literal["waveform", "spectrum", "cqt", "vectorscope"]
    resolution: Literal["320x180", "640x360", "1280x720", "1920x1080"] = "1280x720"
    fps: Literal[24, 30, 60] = 30


class RenderVideoOut(BaseModel):
    """The rendered video of a succeeded render."""

    size: int | None
    location: str | None
    degraded: bool
    download_path: str


class RenderErrorOut(BaseModel):
    """Why a render failed, in the shape of the error envelope's `error` object."""

    code: str
    message: str
    details: dict[str, object]
    timestamp: str | None
    recoverable: bool
    status: int
    request_id: str | None
    doc_url: str


class RenderOut(BaseModel):
    """A render: settings, status, progress and outcome."""

    id: int
    upload_id: int
    preset: str
    resolution: str
    fps: int
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: int
    video: RenderVideoOut | None
    error: RenderErrorOut | None
    credit_refunded: bool
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class RenderEnvelope(BaseModel):
    """A render wrapped in `render`."""

    render: RenderOut


class RenderList(BaseModel):
    """A page of the caller's renders, newest first; `next_before` is the `before` of the next page."""

    renders: list[RenderOut]
    next_before: int | None


class RenderDownloadOut(BaseModel):
    """A short-lived URL that downloads the video."""

    url: str
    expires_in: int


# --- Fault injection (monitoring) --------------------------------------------------------------------


class FaultRuleRequest(StrictModel):
    """Make a service fail, slow down or answer with a status, at a rate, for a bounded time."""

    service: str = Field(min_length=1, max_length=64)
    mode: Literal["fail", "slow", "status"]
    rate: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of calls that get the fault")
    delay_seconds: float = Field(default=1.0, ge=0.0, le=30.0, description="For mode=slow")
    status: int = Field(default=503, ge=400, le=599, description="For mode=status")
    operation: str | None = Field(default=None, max_length=64, description="Only this operation (default: all)")
    duration_seconds: float = Field(default=300.0, ge=1.0, le=3600.0, description="The rule expires after this")


class FaultRuleOut(BaseModel):
    """A live fault rule."""

    service: str
    mode: str
    rate: float
    delay_seconds: float
    status: int
    operation: str | None
    expires_at: float
    expires_in_seconds: float


class FaultListOut(BaseModel):
    """Live rules, where they are shared, and how many faults each service got in the answering process."""

    enabled: bool
    scope: Literal["process", "shared"]
    propagation: PropagationOut
    rules: list[FaultRuleOut]
    injected: dict[str, int]


# --- Alerts and error budgets (monitoring) -----------------------------------------------------------


class WebhookChannel(StrictModel):
    """A generic JSON webhook (Slack-compatible: the body has `text`)."""

    type: Literal["webhook"]
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://")


class PagerDutyChannel(StrictModel):
    """A PagerDuty Events API v2 endpoint (default: PagerDuty's own) and the routing key."""

    type: Literal["pagerduty"]
    routing_key: str = Field(min_length=1, max_length=128)
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")


class EmailChannel(StrictModel):
    """An email address, through the email service (and its outbox)."""

    type: Literal["email"]
    to: EmailStr


AlertChannel = Annotated[WebhookChannel | PagerDutyChannel | EmailChannel, Field(discriminator="type")]


class AlertRuleRequest(StrictModel):
    """Create or replace (by name) an alert rule; `params` are checked per kind (`alerts.params`).

    No channels: the rule still fires into the admin notifications and app.log (the default burn-rate rules).
    """

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Literal[
        "error_rate", "code_count", "breaker_open", "dead_letters", "slo_burn", "failed_work", "service_misconfigured"
    ]
    params: dict[Annotated[str, Field(max_length=32)], str | int | float] = Field(default_factory=dict, max_length=10)
    channels: list[AlertChannel] = Field(default_factory=list, max_length=10)
    severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = "HIGH"
    cooldown_seconds: int = Field(default=300, ge=0, le=86400)
    enabled: bool = True


class AlertRuleOut(BaseModel):
    """A rule with its state."""

    id: int
    name: str
    kind: str
    params: dict[str, object]
    channels: list[dict[str, object]]
    severity: str
    cooldown_seconds: int
    enabled: bool
    state: str
    state_since: str | None
    last_value: float | None
    last_evaluated_at: str | None
    last_notified_at: str | None
    last_error: str | None
    signing_secret: str | None = None  # only when the rule is created or its secret rotated: shown once


class AlertDeliveryOut(BaseModel):
    """One delivery and where it stands."""

    id: int
    rule_id: int
    event: str
    channel_type: str
    breaker: str | None
    status: str
    attempts: int
    last_error: str | None
    created_at: str | None
    sent_at: str | None


class AlertRulesOut(BaseModel):
    """Every rule and the most recent deliveries."""

    rules: list[AlertRuleOut]
    deliveries: list[AlertDeliveryOut]


class AlertEvaluationOut(BaseModel):
    """What one evaluation changed, which rules failed, and the deliveries handed to the job worker."""

    events: dict[str, str]
    errors: dict[str, str]
    deliveries: dict[str, int]
    delivery_job: int | None


class AlertTestOutcome(BaseModel):
    """What one channel did with a test alert."""

    index: int
    type: str
    breaker: str | None
    outcome: Literal["sent", "queued", "failed"]
    error_code: str | None
    error: str | None


class AlertTestOut(BaseModel):
    """A test alert's outcome per channel."""

    rule: str
    channels: list[AlertTestOutcome]


class AlertSecretOut(BaseModel):
    """A rule's new signing secret (shown this once)."""

    rule: str
    signing_secret: str


class AlertDeletedOut(BaseModel):
    """A deleted rule and how many of its deliveries went with it."""

    deleted: str
    deliveries_removed: int


class BurnWindowOut(BaseModel):
    """One multiwindow burn-rate pair."""

    window: str
    factor: float
    long_burn_rate: float
    short_burn_rate: float
    firing: bool


class SloBudgetOut(BaseModel):
    """One endpoint group's SLO and the share of its error budget left."""

    group: str
    kind: Literal["requests", "jobs"]  # `jobs`: finished background jobs, the bad ones failed for good
    objective: float
    window_days: float
    requests: int  # requests (or jobs) counted: not-configured answers are not among them
    errors: int  # server faults (5xx, jobs failed for good)
    not_configured: int  # 503 SERVICE_NOT_CONFIGURED answers: a set-up gap, reported, never burned as an outage
    availability: float | None
    budget_remaining: float  # 1 untouched, 0 spent; below 0 when exhausted
    budget_consumed: float  # budgets spent over the window: 1.5 is half a budget over
    exhausted: bool
    burn: list[BurnWindowOut]


class SloBudgetsOut(BaseModel):
    """Every endpoint group's error budget."""

    budgets: list[SloBudgetOut]
