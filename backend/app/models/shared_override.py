"""Admin overrides every process of the deployment must follow: breaker actions and fault-injection rules.

Without Redis each process keeps its own breaker state in memory, so an admin action taken in one
process (an API request in one gunicorn worker, `flask monitoring reset` in a shell) would change only
that process. The action is written here instead, and every process re-reads this small table at most
every `OVERRIDES_REFRESH_SECONDS` (1) and applies each row whose `version` it has not applied yet.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class SharedOverride(db.Model):  # type: ignore[name-defined]
    """One override: the last admin action on a breaker (`kind` "breaker"), or a fault rule ("fault")."""

    __tablename__ = "shared_overrides"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_shared_overrides_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(64))  # the service
    value: Mapped[str] = mapped_column(Text)  # JSON: {"state": "forced_open"} or the fault rule
    version: Mapped[int] = mapped_column(Integer, default=1)  # bumped by every write: processes apply each once
    updated_at: Mapped[float] = mapped_column(Float)  # wall clock (seconds) of the write
    expires_at: Mapped[float | None] = mapped_column(Float)  # fault rules expire; breaker overrides do not
