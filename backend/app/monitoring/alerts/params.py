"""Alert rule parameters, checked by type and range when a rule is configured (never first at evaluation).

Each kind lists its parameters as `Param`s; `param_errors(kind, params)` answers `{"params.NAME": problem}`
for every missing, unknown, mistyped or out-of-range one, so a rule that is stored can always be evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DAY = 86400


@dataclass(frozen=True)
class Param:
    """One parameter: its type (`number`, `integer` or `text`), whether it is required, and its range."""

    kind: str
    required: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def problem(self, value: object) -> str | None:
        """Why `value` is not acceptable (None: it is)."""
        if self.kind == "text":
            if not isinstance(value, str) or not value.strip():
                return "must be a non-empty string"
            if self.choices is not None and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a whole number" if self.kind == "integer" else "must be a number"
        if self.kind == "integer" and value != int(value):
            return "must be a whole number"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be from {self.low:g} to {self.high:g}"
        return None


WINDOW = Param("integer", low=60, high=90 * DAY)


def _inbox_kinds() -> tuple[str, ...]:
    from ..inbox import KINDS  # at validation time: the inbox imports the job layer

    return tuple(KINDS)


def specs(kind: str) -> Mapping[str, Param]:
    """The parameters of an alert kind."""
    return {
        "error_rate": {
            "threshold": Param("number", True, 0.0, 1.0),
            "window_seconds": WINDOW,
            "min_requests": Param("integer", low=0, high=1_000_000_000),
            "scope": Param("text", choices=("server", "client", "all")),  # which errors: 5xx (default), 4xx, both
        },
        "code_count": {
            "code": Param("text", True),
            "threshold": Param("integer", True, 1, 1_000_000_000),
            "window_seconds": WINDOW,
        },
        "breaker_open": {"service": Param("text", True)},
        "dead_letters": {"threshold": Param("integer", low=1, high=1_000_000), "window_seconds": WINDOW},
        "slo_burn": {
            "group": Param("text", True),  # an endpoint group, or "*": every group (the worst one fires)
            "long_seconds": Param("integer", True, 60, 90 * DAY),
            "short_seconds": Param("integer", True, 60, 90 * DAY),
            "factor": Param("number", True, 0.01, 1000.0),
            "min_requests": Param("integer", low=0, high=1_000_000_000),
        },
        "failed_work": {
            "older_than_minutes": Param("number", True, 0, 525_600),
            "kind": Param("text", choices=_inbox_kinds()),
            "threshold": Param("integer", low=1, high=1_000_000),
        },
        "service_misconfigured": {"service": Param("text")},
    }.get(kind, {})


def param_errors(kind: str, params: Mapping[str, object]) -> dict[str, str]:
    """Every problem with a rule's parameters, by field path (empty: the rule can be evaluated)."""
    spec = specs(kind)
    errors: dict[str, str] = {}
    for name in sorted(set(params) - set(spec)):
        errors[f"params.{name}"] = f"is not a parameter of {kind} (it takes: {', '.join(spec) or 'none'})"
    for name, param in spec.items():
        if name not in params:
            if param.required:
                errors[f"params.{name}"] = "is required"
            continue
        problem = param.problem(params[name])
        if problem is not None:
            errors[f"params.{name}"] = problem
    if kind == "slo_burn" and not errors and params["short_seconds"] > params["long_seconds"]:  # type: ignore[operator]
        errors["params.short_seconds"] = "must not be longer than long_seconds"
    return errors
