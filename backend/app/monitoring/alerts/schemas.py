"""The alert-rule request model and its channels (validated by the admin API, stored by `alerts.views`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

# Each model sets validation.StrictModel's config itself (unknown fields refused, strings stripped): the alerts
# layer sits below the request edge and does not import it.


class WebhookChannel(BaseModel):
    """A generic JSON webhook (Slack-compatible: the body has `text`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    type: Literal["webhook"]
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://")


class PagerDutyChannel(BaseModel):
    """A PagerDuty Events API v2 endpoint (default: PagerDuty's own) and the routing key."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    type: Literal["pagerduty"]
    routing_key: str = Field(min_length=1, max_length=128)
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")


class EmailChannel(BaseModel):
    """An email address, through the email service (and its outbox)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    type: Literal["email"]
    to: EmailStr


AlertChannel = Annotated[WebhookChannel | PagerDutyChannel | EmailChannel, Field(discriminator="type")]


class AlertRuleRequest(BaseModel):
    """Create or replace (by name) an alert rule; `params` are checked per kind (`alerts.params`).

    No channels: the rule still fires into the admin notifications and app.log (the default burn-rate rules).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Literal[
        "error_rate", "code_count", "breaker_open", "dead_letters", "slo_burn", "failed_work", "service_misconfigured"
    ]
    params: dict[Annotated[str, Field(max_length=32)], str | int | float] = Field(default_factory=dict, max_length=10)
    channels: list[AlertChannel] = Field(default_factory=list, max_length=10)
    severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = "HIGH"
    cooldown_seconds: int = Field(default=300, ge=0, le=86400)
    enabled: bool = True
