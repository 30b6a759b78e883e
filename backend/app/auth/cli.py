"""`flask users`: create or promote an administrator from the server's shell (the proof admins.py needs)."""

from __future__ import annotations

import logging
import sys

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from ...log.events import log_security_event
from ..extensions import db
from ..models import User
from ..timeutil import iso_offset
from .admins import grant_admin, is_listed, replace_password
from .passwords import hash_password

users = AppGroup("users", help="User accounts: create or promote administrators.")


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return None


@users.command("create-admin")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--password-prompt", is_flag=True, help="Ask for the password (hidden, twice).")
def create_admin(email: str, password_stdin: bool, password_prompt: bool) -> None:
    """Create EMAIL's account as an admin, or promote the existing one (EMAIL must be in ADMIN_EMAILS).

    With a password (stdin or prompt) an existing account's password is replaced and its tokens stop
    working: use it when you did not create that account yourself.
    """
    email = email.strip().lower()
    if not is_listed(email):
        raise click.ClickException(
            f"{email} is not in ADMIN_EMAILS: add it there first (the list says who may be admin)"
        )
    password = _read_password(password_stdin)
    if password is None and password_prompt:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if password is not None and not 8 <= len(password) <= 128:
        raise click.ClickException("the password must be 8 to 128 characters")
    user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    if user is None:
        if password is None:
            raise click.ClickException("a new account needs a password: --password-stdin or --password-prompt")
        user = User(email=email, password_hash=hash_password(password))
        db.session.add(user)
        db.session.flush()
        action = "created"
    else:
        if password is not None:
            replace_password(user, hash_password(password))
        action = "promoted"
    if user.admin_verified_at is None:
        grant_admin(user, via="cli")
    db.session.commit()
    click.echo(f"{action} admin {email} (account {user.id}, created {iso_offset(user.created_at)})")
    if action == "promoted" and password is None:
        click.echo(
            "The account keeps the password it was registered with: if you did not register it, run again "
            "with --password-prompt to replace it."
        )


@users.command("revoke-admin")
@click.argument("email")
def revoke_admin(email: str) -> None:
    """Take EMAIL's admin proof away (it stays a user; registering again or the CLI can prove it again)."""
    user = db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"no account for {email}")
    user.admin_verified_at = None
    user.admin_verified_via = None
    db.session.commit()
    log_security_event("admin_revoked", "Admin rights revoked", level=logging.WARNING, user_id=user.id, via="cli")
    click.echo(f"revoked admin {user.email}")
