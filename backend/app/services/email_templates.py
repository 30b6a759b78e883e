"""The emails the product sends: render finished, render failed, payment receipt (text and HTML)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

PRODUCT = "Oriel Signal FX Pro"


@dataclass(frozen=True)
class EmailMessage:
    """A rendered email."""

    subject: str
    text: str
    html: str


def _html(title: str, paragraphs: list[str], link: tuple[str, str] | None = None) -> str:
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    if link is not None:
        label, url = link
        body += f'<p><a href="{escape(url, quote=True)}">{escape(label)}</a></p>'
    return f"<html><body><h1>{escape(title)}</h1>{body}<p>{escape(PRODUCT)}</p></body></html>"


def render_finished(*, render_id: int | str, download_url: str) -> EmailMessage:
    """Your video is ready, with its download link."""
    title = "Your video is ready"
    lines = [
        f"Your render #{render_id} has finished.",
        "The download link below expires; ask for a new one in the app.",
    ]
    text = "\n\n".join([*lines, f"Download: {download_url}", PRODUCT])
    return EmailMessage(
        f"{title} (render #{render_id})", text, _html(title, lines, ("Download your video", download_url))
    )


def render_failed(*, render_id: int | str, reason: str, what_to_do: str) -> EmailMessage:
    """Your render failed: the reason and what to do."""
    title = "Your render failed"
    lines = [f"Your render #{render_id} could not be completed.", f"Reason: {reason}", f"What to do: {what_to_do}"]
    text = "\n\n".join([*lines, PRODUCT])
    return EmailMessage(f"{title} (render #{render_id})", text, _html(title, lines))


def format_amount(amount_cents: int, currency: str) -> str:
    """`1250, "usd"` → "12.50 USD"."""
    return f"{amount_cents / 100:.2f} {currency.upper()}"


def payment_receipt(*, pack: str, credits: int, amount_cents: int, currency: str) -> EmailMessage:
    """The receipt for a credit pack."""
    title = "Payment receipt"
    lines = [
        f"Thank you for your purchase of the {pack} pack.",
        f"Amount paid: {format_amount(amount_cents, currency)}",
        f"Render credits added to your account: {credits}",
    ]
    text = "\n\n".join([*lines, PRODUCT])
    return EmailMessage(f"{PRODUCT}: {title}", text, _html(title, lines))
