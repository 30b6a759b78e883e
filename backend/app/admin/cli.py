"""`flask monitoring health|stats|breakers|reset|reset-all|dlq|alerts|failed-work`: the admin API for a shell.

Each command calls the same functions as the admin views (no HTTP), prints a readable table or, with
`--json`, the API's JSON. Admin actions go to security.log with the actor "cli:<os user>".
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from ...log.events import log_security_event
from ..edge.routing import MAX_BIGINT
from ..errors import APIError
from ..extensions import db
from ..monitoring.cli import prune_errors
from ..resilience.breaker import BreakerRegistry
from ..timeutil import utcnow

GROUP = "monitoring"
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (the admin API's shape).")
# A record id, bounded like the API's `<int:...>` routes: an id no column can hold is a usage error, not a traceback.
ID = click.IntRange(1, MAX_BIGINT)


def cli_actor() -> str:
    """The actor recorded for an admin action from the command line: "cli:<os user>"."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry): the uid still says who
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)


def _registry() -> BreakerRegistry:
    return current_app.extensions["breakers"]  # type: ignore[no-any-return]


def _breaker_rows(snapshots: dict[str, dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            name,
            s["state"],
            f"{s['failures_in_window']}/{s['calls_in_window']}",
            f"{s['failure_rate']:.0%}",
            s.get("retry_after") or "",
            s["storage"],
        ]
        for name, s in sorted(snapshots.items())
    ]


BREAKER_HEADERS = ("service", "state", "failures", "rate", "retry after", "storage")


def _shared_admin_action(action: Callable[[], None]) -> None:
    """Run a breaker action that must reach the serving processes, or fail with one clear line.

    A command runs in its own process: an action kept in this process's memory would print a success the
    server never sees, so it is refused; a store that cannot take the write raises and changes nothing.
    """
    if _registry().propagation()["shared_through"] == "process":
        raise click.ClickException(
            "Not applied: breaker state lives in each process's memory here (no REDIS_URL, and the database is "
            "in memory), so a command cannot reach the server. Use the admin API "
            "(POST /admin/api/monitoring/circuit-breakers/...) on the server instead."
        )
    try:
        action()
    except APIError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc


def _applies(propagation: dict[str, Any]) -> str:
    through, within = propagation["shared_through"], propagation["within_seconds"]
    if through == "redis":
        return "Every process sees it now (shared through Redis)."
    return f"Every process applies it within {within:g} s (shared through the database)."


@click.command("health")
@json_option
@with_appcontext
def health(as_json: bool) -> None:
    """Every dependency: probe, latency, breaker (the /health/services view)."""
    from ..monitoring.health import service_health
    from ..monitoring.service_faults import describe

    report = service_health(current_app._get_current_object())  # type: ignore[attr-defined]
    rows = []
    for name, svc in sorted(report["services"].items()):
        probe = svc.get("probe") or {}
        breaker = svc.get("breaker") or {}
        latency = probe.get("latency_ms")
        rows.append(
            [
                name,
                "yes" if svc.get("configured") else "no",
                probe.get("status"),
                "" if latency is None else f"{latency} ms",
                breaker.get("state", "-"),
                probe.get("reason") or probe.get("detail") or "",
            ]
        )
    queue = report.get("queue") or {}
    depth = queue.get("depth") or {}
    # Configuration faults in full: what refused which operation, with what, since when (any process saw it).
    faults = [f"Misconfigured: {describe(fault)}" for fault in report.get("service_faults") or ()]
    text = "\n".join(
        [
            f"Overall: {report['status']}",
            table(("service", "configured", "probe", "latency", "breaker", "detail"), rows),
            *faults,
            f"Queue: {depth.get('ready', 0)} ready, {depth.get('scheduled', 0)} scheduled, "
            f"{depth.get('running', 0)} running; {queue.get('workers_alive', 0)} worker(s) alive; "
            f"{queue.get('dead_letters', 0)} dead letter(s). Logs: {report.get('logs', {}).get('state')}.",
        ]
    )
    _emit(report, as_json, text)


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2%}"


@click.command("stats")
@json_option
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 50), help="How many top groups.")
@with_appcontext
def stats(as_json: bool, top: int) -> None:
    """Totals, rates over 1m/5m/1h/24h and the top groups (the /errors/stats view)."""
    from ..monitoring.errors.stats import error_stats

    data = error_stats(db.session, top=top)
    totals = data["totals"]
    rates = [
        [
            name,
            r["requests"],
            r["server_errors"],
            _percent(r["server_error_ratio"]),
            r["client_errors"],
            _percent(r["client_error_ratio"]),
        ]
        for name, r in data["rates"].items()
    ]
    groups = [[g["id"], g["code"], g["count_24h"], g["count"], g["status"], g["title"]] for g in data["top_groups"]]
    text = "\n\n".join(
        [
            f"Errors: {totals['errors']} in {totals['groups']} groups "
            f"({totals['unresolved']} unresolved, {totals['acknowledged']} acknowledged, "
            f"{totals['resolved']} resolved, {totals['regressed']} regressed)",
            table(("window", "requests", "5xx", "5xx ratio", "4xx", "4xx ratio"), rates),
            "Top groups (24 h):\n" + table(("id", "code", "24h", "total", "status", "title"), groups)
            if groups
            else "Top groups (24 h): none",
        ]
    )
    _emit(data, as_json, text)


@click.command("breakers")
@json_option
@with_appcontext
def breakers(as_json: bool) -> None:
    """Every breaker's state and window."""
    registry = _registry()
    snapshots = registry.snapshot()
    _emit(
        {"storage": registry.storage, "breakers": snapshots}, as_json, table(BREAKER_HEADERS, _breaker_rows(snapshots))
    )


@click.command("reset")
@click.argument("service")
@json_option
@with_appcontext
def reset(service: str, as_json: bool) -> None:
    """Reset one breaker (closed, fresh window) as the CLI actor."""
    breaker = _registry().all().get(service)
    if breaker is None:
        known = ", ".join(sorted(_registry().all()))
        raise click.ClickException(f"No circuit breaker named {service!r} (known: {known}).")
    _shared_admin_action(lambda: breaker.reset(cli_actor()))  # the breaker logs it, with the actor, to security.log
    snap = {service: breaker.snapshot()}
    propagation = _registry().propagation()
    data = {"status": "success", "action": "reset", "breakers": snap, "propagation": propagation}
    text = f"Reset {service}. {_applies(propagation)}\n" + table(BREAKER_HEADERS, _breaker_rows(snap))
    _emit(data, as_json, text)


@click.command("reset-all")
@json_option
@with_appcontext
def reset_all(as_json: bool) -> None:
    """Reset every breaker as the CLI actor."""
    registry = _registry()
    _shared_admin_action(lambda: registry.reset_all(cli_actor()))
    snaps = registry.snapshot()
    propagation = registry.propagation()
    data = {"status": "success", "action": "reset", "breakers": snaps, "propagation": propagation}
    text = f"Reset {len(snaps)} breakers. {_applies(propagation)}\n" + table(BREAKER_HEADERS, _breaker_rows(snaps))
    _emit(data, as_json, text)


@click.command("list")
@json_option
@click.option("--kind", default=None, help="Only this job kind.")
@click.option("--archived", is_flag=True, help="List archived dead letters instead.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100), help="At most this many.")
@with_appcontext
def dlq_list(as_json: bool, kind: str | None, archived: bool, limit: int) -> None:
    """Dead letters, newest first (the dead-letters list view)."""
    from ..jobs.dead_letters import DeadLetterFilter, list_dead_letters, summary

    items, total = list_dead_letters(DeadLetterFilter(kind=kind, archived=archived), page=1, per_page=limit)
    rows = [summary(job) for job in items]
    text = table(
        ("id", "kind", "analysis", "attempts", "dead at", "error"),
        [
            [
                r["id"],
                r["kind"],
                r["failure_analysis"],
                f"{r['attempts']}/{r['max_attempts']}",
                r["dead_at"],
                f"{r['last_error_code'] or ''} {(r['last_error_message'] or '')[:60]}".strip(),
            ]
            for r in rows
        ],
    )
    _emit({"items": rows, "total": total}, as_json, f"{total} dead letter(s)\n{text}")


@click.command("requeue")
@click.argument("job_id", type=ID)
@json_option
@with_appcontext
def dlq_requeue(job_id: int, as_json: bool) -> None:
    """Put one dead letter back in its queue with fresh attempts."""
    from ..jobs.dead_letters import get_dead_letter, requeue

    actor = cli_actor()
    if get_dead_letter(job_id) is None or not requeue(job_id, actor=actor):
        raise click.ClickException(f"No dead letter with id {job_id}.")
    log_security_event("dead_letter_requeued", f"Dead letter requeued by {actor}", actor=actor, job_ids=[job_id])
    data = {"message": "Requeued 1 dead letter.", "job_ids": [job_id]}
    _emit(data, as_json, f"Requeued dead letter {job_id}.")


@click.command("test")
@click.argument("name", metavar="RULE")
@json_option
@with_appcontext
def alerts_test(name: str, as_json: bool) -> None:
    """Evaluate one rule's condition now, without changing its state or sending anything."""
    from ..models import AlertRule
    from ..monitoring.alerts.engine import evaluate_condition

    rule = db.session.scalar(select(AlertRule).where(AlertRule.name == name))
    if rule is None:
        raise click.ClickException(f"No alert rule named {name!r}.")
    firing, value, summary = evaluate_condition(current_app._get_current_object(), rule, utcnow())  # type: ignore[attr-defined]
    data = {
        "rule": rule.name,
        "kind": rule.kind,
        "enabled": rule.enabled,
        "state": rule.state,
        "would_fire": firing,
        "value": value,
        "summary": summary,
    }
    verdict = "WOULD FIRE" if firing else "would not fire"
    enabled = "enabled" if rule.enabled else "disabled"
    text = f"{rule.name} ({rule.kind}, {enabled}, now {rule.state}): {verdict}\n{summary}"
    _emit(data, as_json, text)


def age(seconds: int) -> str:
    """A short age: 42s, 45m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _inbox_call(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run an inbox action; its typed error (unknown kind or id, not open, bad input) as a CLI error."""
    try:
        return call()
    except APIError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc


def _error_text(item: dict[str, Any], width: int = 60) -> str:
    return f"{item['error_code'] or ''} {(item['error_message'] or '')[:width]}".strip()


@click.command("list")
@json_option
@click.option("--kind", default=None, help="Only this kind (job, email, storage, payment).")
@click.option("--page", default=1, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--per-page", default=50, show_default=True, type=click.IntRange(1, 100))
@with_appcontext
def inbox_list(as_json: bool, kind: str | None, page: int, per_page: int) -> None:
    """Items in the failed-work inbox, oldest failure first, with their error, age and attempts."""
    from .failed_work import list_items

    data = _inbox_call(lambda: list_items(kind, page=page, per_page=per_page))
    rows = [
        [i["kind"], i["id"], i["title"], age(i["age_seconds"]), i["attempts"], _error_text(i)] for i in data["items"]
    ]
    totals = ", ".join(f"{n} {k}" for k, n in data["totals"].items())
    text = f"{data['total']} item(s) in the inbox ({totals})\n" + table(
        ("kind", "id", "title", "age", "attempts", "error"), rows
    )
    _emit(data, as_json, text)


@click.command("show")
@click.argument("kind")
@click.argument("item_id", type=ID)
@json_option
@with_appcontext
def inbox_show(kind: str, item_id: int, as_json: bool) -> None:
    """One item with its history and details."""
    from .failed_work import show_item

    data = _inbox_call(lambda: show_item(kind, item_id))
    item = data["item"]
    history = [[h.get("time"), h.get("code"), h.get("kind"), (h.get("message") or "")[:80]] for h in item["history"]]
    text = "\n".join(
        [
            f"{item['title']} ({item['kind']} {item['id']}, {item['status']})",
            f"Error: {_error_text(item, 200) or '-'}",
            f"Failed {age(item['age_seconds'])} ago, after {item['attempts']} attempt(s); created {item['created_at']}",
            "History:\n" + table(("time", "code", "kind", "message"), history) if history else "History: none",
            "Details: " + json.dumps(item["details"], indent=2, sort_keys=True, default=str),
        ]
    )
    _emit(data, as_json, text)


@click.command("retry")
@click.argument("kind")
@click.argument("item_id", type=ID, required=False)
@click.option("--all", "every", is_flag=True, help="Retry every item of KIND (oldest first, at most --limit).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@json_option
@with_appcontext
def inbox_retry(kind: str, item_id: int | None, every: bool, limit: int, as_json: bool) -> None:
    """Put an item's work back where it came from (or, with --all, every item of KIND) as the CLI actor."""
    from .failed_work import retry_item, retry_kind

    if (item_id is None) == (not every):
        raise click.UsageError("Give an id or --all (not both).")
    actor = cli_actor()
    if every:
        data = _inbox_call(lambda: retry_kind(kind, limit=limit, actor=actor))
    else:
        data = _inbox_call(lambda: retry_item(kind, item_id, actor=actor))  # type: ignore[arg-type]
    _emit(data, as_json, data["message"])


@click.command("discard")
@click.argument("kind")
@click.argument("item_id", type=ID)
@click.option("--reason", required=True, help="Why the work is given up (1-500 characters).")
@json_option
@with_appcontext
def inbox_discard(kind: str, item_id: int, reason: str, as_json: bool) -> None:
    """Give an item up with a reason (kept with it until the retention purge) as the CLI actor."""
    from .failed_work import discard_item

    data = _inbox_call(lambda: discard_item(kind, item_id, reason=reason, actor=cli_actor()))
    _emit(data, as_json, data["message"])


dlq = click.Group("dlq", help="Dead letters: list and requeue.", commands=[dlq_list, dlq_requeue])
alerts = click.Group("alerts", help="Alert rules: test one now.", commands=[alerts_test])
failed_work = click.Group(
    "failed-work",
    help="The failed-work inbox (dead jobs, failed emails, stuck files, unapplied payments).",
    commands=[inbox_list, inbox_show, inbox_retry, inbox_discard],
)
COMMANDS: tuple[click.Command, ...] = (health, stats, breakers, reset, reset_all, dlq, alerts, failed_work)


#: `flask monitoring`, registered by create_app: the admin's commands and the error-statistics prune.
monitoring_cli = AppGroup(
    GROUP,
    help="Monitoring: health, error statistics, breakers, dead letters, alerts, failed work, maintenance.",
    commands=[*COMMANDS, prune_errors],
)
