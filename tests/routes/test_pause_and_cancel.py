"""Cancellations made in the customer portal, and paused subscriptions: what the mirror shows,
what apps and the owner hear, and how the service undoes them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg
import httpx

from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, checkout_body
from tests.routes.tiers import allowance, customer, mirrored, price_id, tiered
from tests.stripe_fakes import FakeStripe
from tests.test_openapi import assert_matches_schema

DAY = 86_400


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def test_a_portal_cancellation_is_pending_everywhere_and_resume_undoes_it(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """In flexible billing mode the portal sets only `cancel_at`: the subscription shows the
    pending cancellation, apps get subscription.updated, the owner gets the cancellation
    email, and /resume clears `cancel_at` in Stripe."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)
    fake_stripe.portal_cancel(subscription["id"])
    await mirrored(stripe_client, pool, gateway, subscription)

    templates = await pool.fetch("SELECT template FROM email_deliveries ORDER BY created_at")
    assert [row["template"] for row in templates] == [
        "owner_new_subscription",
        "owner_cancellation",
    ]
    payload = await pool.fetchval(
        "SELECT payload FROM outbox_events WHERE type = 'subscription.updated' "
        "ORDER BY created_at DESC LIMIT 1"
    )
    assert payload["cancel_at"] is not None
    assert payload["cancellation_pending"] is True
    shown = (await customer(stripe_client, billing_key))["subscription"]
    assert shown["cancel_at_period_end"] is False
    assert shown["cancellation_pending"] is True
    assert shown["cancel_at"] == shown["current_period_end"]
    assert_matches_schema(shown, "Subscription")

    resumed = await stripe_client.post(
        "/v1/customers/user_1/subscription/resume", headers=bearer(billing_key)
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["cancellation_pending"] is False
    assert resumed.json()["cancel_at"] is None
    assert fake_stripe.calls[-1].form == {"cancel_at": ""}
    assert subscription["cancel_at"] is None
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"


async def test_a_cancellation_date_ends_the_billing_period_allowance_early(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Set to cancel in ten days, the plan is kept until then and an allowance that resets
    with the billing period resets (ends) at the cancellation date."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    cancel_at = int(time.time()) + 10 * DAY
    subscription.update(cancel_at=cancel_at, billing_mode={"type": "flexible", "flexible": {}})
    await mirrored(stripe_client, pool, gateway, subscription)

    seats = await allowance(stripe_client, billing_key, "seats")
    assert seats["limit"] == 10
    assert seats["resets_at"] == iso(cancel_at)
    assert (await customer(stripe_client, billing_key))["subscription"]["cancel_at"] == iso(
        cancel_at
    )


async def test_a_paused_subscription_grants_nothing_and_resumes_through_the_service(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Paused (a trial ended without a payment method): the free plan applies; a second
    checkout and a plan change are refused with a pointer to /resume; /resume asks Stripe to
    resume it and the plan is back."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly"), status="paused"
    )
    await mirrored(stripe_client, pool, gateway, subscription, "customer.subscription.paused")
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "free"

    checkout = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert checkout.status_code == 409
    assert checkout.json()["type"] == "urn:billing-service:problem:subscription-exists"
    assert "/v1/customers/user_1/subscription/resume" in checkout.json()["detail"]
    changed = await stripe_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "pro_yearly"},
    )
    assert changed.status_code == 409
    assert changed.json()["type"] == "urn:billing-service:problem:subscription-paused"
    assert "/v1/customers/user_1/subscription/resume" in changed.json()["detail"]
    at_period_end = await stripe_client.post(
        "/v1/customers/user_1/subscription/cancel",
        headers=bearer(billing_key),
        json={"at_period_end": True},
    )
    assert at_period_end.json()["type"] == "urn:billing-service:problem:subscription-paused"

    resumed = await stripe_client.post(
        "/v1/customers/user_1/subscription/resume", headers=bearer(billing_key)
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    assert_matches_schema(changed.json(), "Problem")
    [call] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}/resume")
    assert call.idempotency_key is not None
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"
    again = await stripe_client.post(
        "/v1/customers/user_1/subscription/resume", headers=bearer(billing_key)
    )
    assert again.status_code == 409
