"""`flask services ...`: replay the work the fallbacks stood in for, and show the adapters' status."""

from __future__ import annotations

import json

import click

from . import _services, get_email, get_storage


@click.group("services")
def services_cli() -> None:
    """Replay work the fallbacks stood in for, and show the adapters' status."""


@services_cli.command("sync-storage")
@click.option("--limit", default=100, show_default=True)
def sync_storage_command(limit: int) -> None:
    """Upload the due files kept in local fallback storage to the bucket; say what is left."""
    storage = get_storage()
    uploaded = storage.sync_pending(limit)
    click.echo(
        f"uploaded {uploaded}; pending {storage.pending_sync_count()}; "
        f"failed {storage.failed_sync_count()} (in the failed-work inbox)"
    )


@services_cli.command("resend-email")
@click.option("--limit", default=100, show_default=True)
def resend_email_command(limit: int) -> None:
    """Send the queued emails of the outbox; say what is left."""
    email = get_email()
    sent = email.resend_outbox(limit)
    click.echo(
        f"sent {sent}; queued {email.outbox_count()}; failed {email.failed_count()} (in the failed-work inbox); "
        f"possible duplicates {email.possible_duplicates()}"
    )


@services_cli.command("status")
def status_command() -> None:
    """Print every adapter's status as JSON."""
    click.echo(json.dumps(_services().status(), indent=2, default=str))
