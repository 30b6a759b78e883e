"""`flask credits grant EMAIL N`: add render credits by hand (a local user, or support), through the ledger."""

from __future__ import annotations

import uuid

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from ...log.events import log_security_event
from ..admin.cli import cli_actor
from ..extensions import db
from ..models import User
from ..services import credits

# One grant adds at most this many credits: a typo (an extra zero or three) must not mint a fortune.
MAX_GRANT = 1000
REASON_MAX = 200  # the ledger's reason column

credits_cli = AppGroup("credits", help="Render credits: grant some by hand (support, local runs).")


def _reason(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= REASON_MAX:
        raise click.BadParameter(f"must be 1 to {REASON_MAX} characters")
    return value


@credits_cli.command("grant")
@click.argument("email")
@click.argument("amount", metavar="N", type=click.IntRange(1, MAX_GRANT))
@click.option("--reason", default="granted by support", show_default=True, callback=_reason, help="Kept in the ledger.")
def grant(email: str, amount: int, reason: str) -> None:
    """Add N render credits (1 to 1000) to EMAIL's account: a ledger grant, any debt paid off first."""
    user = db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"No account for {email}: the user registers first (POST /api/auth/register).")
    actor = cli_actor()
    ref = f"cli:{uuid.uuid4().hex}"  # every command is a grant of its own
    credits.grant(user.id, amount, f"{reason} ({actor})", ref)
    account = credits.account(user.id)
    log_security_event(
        "credits_granted",
        f"{amount} render credit(s) granted to {user.email} by {actor}",
        actor=actor,
        email=user.email,
        user_id=user.id,
        amount=amount,
        balance=account.balance,
        debt=account.debt,
        reason=reason,
        ref=ref,
    )
    owed = f", still owing {account.debt}" if account.debt else ""
    click.echo(f"Granted {amount} render credit(s) to {user.email}: balance {account.balance}{owed}.")
