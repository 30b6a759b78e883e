"""Query strings of the monitoring endpoints as pydantic models (`parse_query` turns them into our 422)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..timeutil import as_utc


class StatsQuery(BaseModel):
    """Query of GET .../errors/stats."""

    model_config = ConfigDict(extra="forbid")

    top: int = Field(default=10, ge=1, le=50)


class RecentErrorsQuery(BaseModel):
    """Query of GET .../logs/recent-errors."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    code: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]{0,63}$")
    group: int | None = Field(default=None, ge=1)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A time without an offset is taken as UTC, the only zone the store uses.
        return as_utc(value)
