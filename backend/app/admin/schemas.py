"""Response and request models of the admin monitoring API: stats, trace, health, breakers, faults, alerts, SLOs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..api.schemas import BreakerSnapshotOut, ErrorGroupOut
from ..edge.validation import StrictModel


class HealthCheckOut(BaseModel):
    """Basic health."""

    status: str
    timestamp: str
    checks: dict[str, str]


# --- Error statistics (monitoring) ---------------------------------------------------------------


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
