"""Email notifications: sent once per change to a real SMTP server, despite redeliveries and
crashes, rendered from the packaged templates."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller

from billing_service.config import Settings
from billing_service.db import outbox
from billing_service.services.email import EmailWorker, render, template_values
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import seeded
from tests.routes.test_webhooks import (
    customer_with_stripe_account,
    drain,
    paid_credit_pack_checkout,
    post_event,
    stripe_price,
)
from tests.stripe_fakes import FakeStripe, stripe_event
from tests.support import free_port

OWNER = "owner@example.com"


@dataclass
class Mailbox:
    """What a real SMTP server (aiosmtpd) received; `refuse_next` answers 451 to that many."""

    messages: list[Message] = field(default_factory=list)
    refuse_next: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_next:
            self.refuse_next -= 1
            return "451 Try again later"
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    port = free_port()
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def mail_settings(stripe_settings: Settings, mailbox: tuple[Mailbox, int]) -> Settings:
    return stripe_settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": mailbox[1],
            "smtp_security": "none",
            "owner_email": OWNER,
            "mail_from": "billing@example.com",
        }
    )


async def send_all(pool: asyncpg.Pool, settings: Settings) -> int:
    worker = EmailWorker(pool, settings)
    total = 0
    while sent := await worker.send_due():
        total += sent
    return total


def text_of(message: Message) -> str:
    part = message.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return str(part.get_content())


async def test_a_paid_order_sends_one_confirmation_and_one_owner_email(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    mail_settings: Settings,
    mailbox: tuple[Mailbox, int],
) -> None:
    """The event arrives 3 times, a worker dies after claiming the emails, the SMTP server
    refuses once: the customer still gets one confirmation and the owner one notification."""
    box, _port = mailbox
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    event = await paid_credit_pack_checkout(stripe_client, fake_stripe, billing_key, "user_1")
    fake_stripe.sessions[event["data"]["object"]["id"]]["customer_details"] = {
        "email": "buyer@example.com"
    }
    for _ in range(3):
        await post_event(stripe_client, event)
        await drain(pool, gateway)

    crashed = await outbox.claim_due_emails(pool, limit=10, lease_seconds=60)  # then it dies
    assert len(crashed) == 2
    assert await send_all(pool, mail_settings) == 0  # leased: nobody else sends them yet
    await pool.execute("UPDATE email_deliveries SET next_attempt_at = now()")  # lease runs out
    box.refuse_next = 1
    await send_all(pool, mail_settings)
    await pool.execute("UPDATE email_deliveries SET next_attempt_at = now()")  # the retry is due
    await send_all(pool, mail_settings)

    [confirmation] = box.to("buyer@example.com")
    [sale] = box.to(OWNER)
    assert confirmation["Subject"] == "Your order is confirmed"
    assert "10.00 USD" in text_of(confirmation)
    assert "1 x ai_credits_1000" in text_of(confirmation)
    assert sale["Subject"] == "New sale: 10.00 USD"
    assert confirmation.get_body(preferencelist=("html",)) is not None  # type: ignore[attr-defined]
    statuses = await pool.fetch("SELECT status, attempts FROM email_deliveries ORDER BY template")
    assert [row["status"] for row in statuses] == ["sent", "sent"]


async def test_payment_failure_and_subscription_changes_are_emailed(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    mail_settings: Settings,
    mailbox: tuple[Mailbox, int],
) -> None:
    """A failed invoice emails the customer a link; the owner hears of the new subscription
    and of its cancellation."""
    box, _port = mailbox
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    await post_event(stripe_client, stripe_event("customer.subscription.created", subscription))
    await drain(pool, gateway)
    invoice = fake_stripe.add_invoice(
        customer, hosted_invoice_url="https://invoice.stripe.com/i/abc"
    )
    invoice.update(amount_due=1900, currency="usd")
    await post_event(stripe_client, stripe_event("invoice.payment_failed", invoice))
    subscription["cancel_at_period_end"] = True
    await post_event(stripe_client, stripe_event("customer.subscription.updated", subscription))
    await drain(pool, gateway)

    await send_all(pool, mail_settings)

    [failed] = box.to("a@example.com")
    assert failed["Subject"] == "Your payment did not go through"
    assert "https://invoice.stripe.com/i/abc" in text_of(failed)
    assert "19.00 USD" in text_of(failed)
    owner_subjects = sorted(m["Subject"] for m in box.to(OWNER))
    assert owner_subjects == ["Cancellation: user_1", "New subscription: pro"]


async def test_without_an_smtp_host_emails_are_skipped_not_queued(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    stripe_settings: Settings,
) -> None:
    """Email off: deliveries are marked skipped, so turning it on later sends no stale mail."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    event = await paid_credit_pack_checkout(stripe_client, fake_stripe, billing_key, "user_1")
    await post_event(stripe_client, event)
    await drain(pool, gateway)
    await send_all(pool, stripe_settings)
    assert {r["status"] for r in await pool.fetch("SELECT status FROM email_deliveries")} == {
        "skipped"
    }


def test_templates_escape_values_in_html_only(stripe_settings: Settings) -> None:
    """Values go into the HTML body escaped, and into the text body as they are."""
    values = template_values(
        {"customer_id": "<b>acme</b>", "amount_total": 1234, "currency": "eur",
         "line_items": [], "order_id": "o1"},
        stripe_settings,
    )  # fmt: skip
    rendered = render("sale_notification", values)
    assert "&lt;b&gt;acme&lt;/b&gt;" in rendered.html
    assert "<b>acme</b>" in rendered.text
    assert rendered.subject == "New sale: 12.34 EUR"
