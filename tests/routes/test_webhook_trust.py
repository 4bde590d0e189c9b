"""Signed events are signals, never the truth: a payload that says something Stripe does not
(a foreign payment link, a deletion that did not happen) changes nothing and reaches nobody."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.services.email import render, template_values
from billing_service.stripe_gateway import StripeGateway
from billing_service.stripe_objects import stripe_hosted_url
from tests.routes.test_checkout import seeded
from tests.routes.test_customers import subscribed
from tests.routes.test_webhooks import drain, plan_of, post_event
from tests.stripe_fakes import FakeStripe, stripe_event

PHISHING = "https://billing-stripe.example/pay/in_1"


async def subscribed_customer(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    key: str,
) -> str:
    """user_1 on Pro; returns their Stripe customer id."""
    await seeded(client, pool, gateway, key, "user_1")
    await subscribed(client, fake_stripe, key, "pro_monthly")
    [subscription] = fake_stripe.subscriptions.values()
    customer: str = subscription["customer"]
    return customer


async def test_a_forged_payment_failure_cannot_put_its_link_or_amount_in_an_email(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    stripe_settings: Settings,
) -> None:
    """The invoice is fetched from Stripe: payment.failed and the customer's email carry
    Stripe's hosted page and amount, not the payload's."""
    customer = await subscribed_customer(stripe_client, pool, gateway, fake_stripe, billing_key)
    invoice = fake_stripe.add_invoice(customer)
    invoice.update(amount_due=1900, currency="usd")
    forged = invoice | {"hosted_invoice_url": PHISHING, "amount_due": 999_999}

    await post_event(stripe_client, stripe_event("invoice.payment_failed", forged))
    await drain(pool, gateway)

    payload = await pool.fetchval("SELECT payload FROM outbox_events WHERE type = 'payment.failed'")
    assert payload["hosted_invoice_url"] == invoice["hosted_invoice_url"]
    assert payload["amount_due"] == 1900
    [to] = await pool.fetch(
        "SELECT to_address FROM email_deliveries WHERE template = $1", "payment_failed"
    )
    assert to["to_address"] == "user_1@example.com"
    email = render("payment_failed", template_values(payload, stripe_settings))
    assert invoice["hosted_invoice_url"] in email.text
    assert PHISHING not in email.text + email.html
    assert "19.00 USD" in email.text


async def test_a_payment_failure_already_settled_in_stripe_emails_nobody(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """An invoice paid since the failure (a retry, a new card) needs no action: no
    payment.failed event and no email, though the subscription is still synced."""
    customer = await subscribed_customer(stripe_client, pool, gateway, fake_stripe, billing_key)
    invoice = fake_stripe.add_invoice(customer, status="paid")

    await post_event(
        stripe_client, stripe_event("invoice.payment_failed", invoice | {"status": "open"})
    )
    await drain(pool, gateway)

    assert (
        await pool.fetchval("SELECT count(*) FROM outbox_events WHERE type = 'payment.failed'") == 0
    )
    assert await pool.fetchval("SELECT count(*) FROM email_deliveries") == 1  # the new-plan one
    assert await pool.fetchval("SELECT status FROM stripe_events") == "processed"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://invoice.stripe.com/i/acct_1/test_abc", True),
        ("https://billing.stripe.com/p/session/test_abc", True),
        ("https://pay.stripe.com/invoice/acct_1/test_abc", True),
        ("http://invoice.stripe.com/i/acct_1/test_abc", False),
        ("https://invoice.stripe.com.evil.example/i/abc", False),
        ("https://evil.example/?u=https://invoice.stripe.com/", False),
        ("https://checkout.stripe.com@evil.example/", False),
        (None, False),
        (42, False),
    ],
)
def test_only_pages_stripe_hosts_pass(url: object, kept: bool) -> None:
    """Invoice, portal and payment pages on Stripe's own hosts, over https, and nothing else."""
    assert stripe_hosted_url(url) == (url if kept else None)


def test_an_email_never_links_to_a_page_stripe_does_not_host(stripe_settings: Settings) -> None:
    """Even a payload stored with a foreign link (before this check existed) renders without it."""
    values = template_values({"hosted_invoice_url": PHISHING, "amount_due": 100}, stripe_settings)
    rendered = render("payment_failed", values)
    assert PHISHING not in rendered.text + rendered.html


async def test_a_customer_deleted_event_stripe_does_not_confirm_changes_nothing(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A signed customer.deleted for a customer Stripe still has keeps the Stripe id, the
    subscription and the plan."""
    customer = await subscribed_customer(stripe_client, pool, gateway, fake_stripe, billing_key)
    stub = {"id": customer, "object": "customer", "deleted": True}

    await post_event(stripe_client, stripe_event("customer.deleted", stub))
    await drain(pool, gateway)

    assert await pool.fetchval("SELECT stripe_customer_id FROM customers") == customer
    assert await pool.fetchval("SELECT status FROM subscriptions") == "active"
    assert await plan_of(stripe_client, billing_key) == "pro"
    assert fake_stripe.calls_to("GET", f"/v1/customers/{customer}")
