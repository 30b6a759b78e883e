"""A module that registers a job kind, named by JOBS_IMPORTS in tests (#13 point 11)."""

from __future__ import annotations

from typing import Any

from backend.app.jobs import JobContext, job_kind

KIND = "tests.extra.echo"


@job_kind(KIND, max_attempts=1)
def echo(ctx: JobContext) -> dict[str, Any]:
    """Return the payload (a kind only this module registers)."""
    return dict(ctx.payload)
