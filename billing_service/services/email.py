"""Email notifications over SMTP, rendered from templates shipped in the package.

Emails are outbox deliveries: written with the change that causes them, then sent by a worker
with retries. With no `BILLING_SMTP_HOST` they are marked `skipped` instead of piling up.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from importlib.resources import files
from string import Template
from typing import Any

import aiosmtplib
import asyncpg
import structlog

from billing_service.config import Settings
from billing_service.db import outbox
from billing_service.db.outbox import EmailDelivery
from billing_service.services.outgoing_webhooks import LEASE_SECONDS, retry_delay
from billing_service.stripe_objects import stripe_hosted_url

logger = structlog.get_logger(__name__)

TIMEOUT_SECONDS = 20.0
_TEMPLATES = files("billing_service") / "templates" / "email"


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def money(amount: object, currency: object) -> str:
    """Minor units as `12.34 USD` (two decimals; good enough for a notification)."""
    if not isinstance(amount, int):
        return "—"
    return f"{amount / 100:.2f} {str(currency or '').upper()}".strip()


def template_values(payload: dict[str, Any], settings: Settings) -> dict[str, str]:
    """Everything a template may mention, as text."""
    items = ", ".join(
        f"{item.get('quantity', 1)} x {item.get('price')}" for item in payload.get("line_items", [])
    )
    credits = "; ".join(
        f"{c.get('clawed_back')} of {c.get('granted')} {c.get('feature')} taken back"
        + (f", {c.get('unrecovered')} already spent" if c.get("unrecovered") else "")
        for c in payload.get("credits_clawed_back", [])
    )
    # The portal (Stripe's no-code login link) when configured, else the invoice's own page,
    # and only if Stripe hosts it: a link in our email must never lead anywhere else.
    manage_url = settings.portal_login_url or stripe_hosted_url(payload.get("hosted_invoice_url"))
    values = {key: "" if value is None else str(value) for key, value in payload.items()}
    amount = payload.get("amount_total", payload.get("amount_due", payload.get("amount")))
    return values | {
        "items": items or "—",
        "credits": credits or "none",
        "total": money(amount, payload.get("currency")),
        "manage_url": str(manage_url or ""),
        "hosted_invoice_url": stripe_hosted_url(payload.get("hosted_invoice_url")) or "",
    }


def render(template: str, values: dict[str, str]) -> Rendered:
    """Fill the template's text and HTML bodies; values are HTML-escaped in the HTML one."""
    text_source = (_TEMPLATES / f"{template}.txt").read_text(encoding="utf-8")
    html_source = (_TEMPLATES / f"{template}.html").read_text(encoding="utf-8")
    subject_line, _, text_body = text_source.partition("\n\n")
    escaped = {key: html.escape(value) for key, value in values.items()}
    return Rendered(
        subject=Template(subject_line.removeprefix("Subject: ")).safe_substitute(values),
        text=Template(text_body).safe_substitute(values),
        html=Template(html_source).safe_substitute(escaped),
    )


def build_message(
    settings: Settings, to_address: str, rendered: Rendered, key: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to_address
    message["Subject"] = rendered.subject
    message["Message-ID"] = make_msgid(idstring=key, domain="billing-service")
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


class EmailWorker:
    """Sends due emails; several workers (replicas) may share the outbox."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def send_due(self, *, limit: int = 20) -> int:
        claimed = await outbox.claim_due_emails(self.pool, limit=limit, lease_seconds=LEASE_SECONDS)
        for email in claimed:
            await self.send(email)
        return len(claimed)

    async def send(self, email: EmailDelivery) -> None:
        recipient = email.to_address or self.settings.owner_email
        log = logger.bind(email_id=str(email.id), template=email.template)
        if self.settings.smtp_host is None or recipient is None:
            reason = "no SMTP host" if self.settings.smtp_host is None else "no owner address"
            await outbox.finish_email(self.pool, email.id, status="skipped", error=reason)
            log.info("email.skipped", reason=reason)
            return
        rendered = render(email.template, template_values(email.payload, self.settings))
        message = build_message(self.settings, recipient, rendered, str(email.id))
        started = time.monotonic()
        try:
            await aiosmtplib.send(message, **self._smtp_options())
        except (aiosmtplib.SMTPException, OSError) as exc:
            delay = retry_delay(email.attempts)
            await outbox.finish_email(
                self.pool,
                email.id,
                status="pending" if delay is not None else "failed",
                error=f"{type(exc).__name__}: {exc}"[:2000],
                retry_in_seconds=delay,
            )
            # The exception's text may name the recipient; the log line carries its type only.
            log.warning("email.failed", attempts=email.attempts, error=type(exc).__name__)
            return
        await outbox.finish_email(self.pool, email.id, status="sent")
        log.info("email.sent", duration_ms=round((time.monotonic() - started) * 1000, 1))

    def _smtp_options(self) -> dict[str, Any]:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return {
            "hostname": settings.smtp_host,
            "port": settings.smtp_port,
            "username": settings.smtp_user,
            "password": password,
            "use_tls": settings.smtp_security == "tls",
            "start_tls": settings.smtp_security == "starttls",
            "timeout": TIMEOUT_SECONDS,
        }
