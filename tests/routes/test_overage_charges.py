"""What billed overage will cost: entitlements show billable units and the estimated amount, and
the upcoming invoice shows the metered line Stripe's meter summed."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from billing_service.services import customers
from billing_service.services.meter_events import MeterEventDelivery
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, seeded
from tests.routes.test_customers import subscribed
from tests.routes.test_usage import track
from tests.stripe_fakes import FakeStripe
from tests.test_openapi import assert_matches_schema

INCLUDED = 500  # Pro's ai_calls limit in catalog.example.yaml, billed past it at 2 cents a call


async def pro_customer_with_metered_item(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    key: str,
) -> dict[str, Any]:
    """user_1 on Pro monthly, whose Stripe subscription carries the metered AI-calls price as
    Stripe has it after a checkout of a billed plan; returns that metered item."""
    await seeded(client, pool, gateway, key, "user_1")
    await subscribed(client, fake_stripe, key, "pro_monthly")
    (subscription,) = fake_stripe.subscriptions.values()
    metered_price = await pool.fetchval(
        "SELECT mp.stripe_price_id FROM metered_prices mp JOIN plans p ON p.id = mp.plan_id "
        "WHERE p.key = 'pro' AND mp.recurring_interval = 'month' AND mp.active"
    )
    # Checkout asked Stripe for the plan's metered price, so the subscription carries it.
    item: dict[str, Any] = next(
        i for i in subscription["items"]["data"] if i["price"]["id"] == metered_price
    )
    customer = await customers.get_customer(pool, "user_1")
    await customers.sync_subscriptions_from_stripe(pool, gateway, customer)
    return item


def feature(body: dict[str, object], key: str) -> dict[str, object]:
    features = body["features"]
    assert isinstance(features, list)
    return next(f for f in features if f["feature"] == key)


async def test_entitlements_show_billable_units_and_the_estimated_amount(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Units tracked past Pro's 500 AI calls are billable at 2 cents each: 507 calls show 7
    billable units and an estimated 14 cents, in the entitlements and the usage report; features
    not billed show null (and are not in the report); a free-plan customer shows null too."""
    await pro_customer_with_metered_item(stripe_client, pool, gateway, fake_stripe, billing_key)
    url = "/v1/customers/user_1/entitlements"
    within = (await stripe_client.get(url, headers=bearer(billing_key))).json()
    assert feature(within, "ai_calls")["overage_billing"] == {
        "billable_units": 0, "unit_amount": "2", "currency": "usd", "estimated_amount": "0",
    }  # fmt: skip
    assert (await track(stripe_client, billing_key, amount=INCLUDED)).json()["allowed"] is True
    past = await track(stripe_client, billing_key, amount=7)
    assert past.json()["allowed"] is True, past.text
    body = (await stripe_client.get(url, headers=bearer(billing_key))).json()
    assert_matches_schema(body, "Entitlements")
    assert feature(body, "ai_calls")["used"] == INCLUDED + 7
    assert feature(body, "ai_calls")["overage_billing"] == {
        "billable_units": 7, "unit_amount": "2", "currency": "usd", "estimated_amount": "14",
    }  # fmt: skip
    assert feature(body, "projects")["overage_billing"] is None
    report = await stripe_client.get("/v1/customers/user_1/usage", headers=bearer(billing_key))
    (billed,) = report.json()["overage_billing"]
    assert billed == {
        "feature": "ai_calls", "period_start": feature(body, "ai_calls")["period_start"],
        "period_end": feature(body, "ai_calls")["resets_at"], "billable_units": 7,
        "unit_amount": "2", "currency": "usd", "estimated_amount": "14",
    }  # fmt: skip
    other = await stripe_client.get(
        "/v1/customers/user_1/usage?feature=projects", headers=bearer(billing_key)
    )
    assert other.json()["overage_billing"] == []
    assert feature(body, "export_csv")["overage_billing"] is None
    await stripe_client.put(
        "/v1/customers/user_2", headers=bearer(billing_key), json={"email": "b@example.com"}
    )
    await track(stripe_client, billing_key, customer="user_2", amount=3)
    free = (
        await stripe_client.get("/v1/customers/user_2/entitlements", headers=bearer(billing_key))
    ).json()
    assert all(f["overage_billing"] is None for f in free["features"])


async def test_only_this_periods_billable_units_count(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Billable units recorded before the current period began (last month's overage, already
    invoiced) are not in this period's estimate."""
    await pro_customer_with_metered_item(stripe_client, pool, gateway, fake_stripe, billing_key)
    await track(stripe_client, billing_key, amount=INCLUDED + 4)
    await pool.execute("UPDATE meter_events SET occurred_at = occurred_at - interval '40 days'")
    await track(stripe_client, billing_key, amount=INCLUDED + 1)
    body = (
        await stripe_client.get("/v1/customers/user_1/entitlements", headers=bearer(billing_key))
    ).json()
    charge = feature(body, "ai_calls")["overage_billing"]
    assert isinstance(charge, dict)
    assert await pool.fetchval("SELECT sum(value) FROM meter_events") == 4 + INCLUDED + 1
    assert charge["billable_units"] == INCLUDED + 1
    assert charge["estimated_amount"] == str(2 * (INCLUDED + 1))


async def test_the_upcoming_invoice_shows_the_metered_line_the_meter_summed(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Billable units delivered to Stripe's meter appear in the preview as the metered line:
    the metered price's lookup key, the units as quantity, 2 cents each, matching the estimate
    the entitlements show."""
    item = await pro_customer_with_metered_item(
        stripe_client, pool, gateway, fake_stripe, billing_key
    )
    await track(stripe_client, billing_key, amount=INCLUDED + 9)
    assert await MeterEventDelivery(pool, gateway).deliver_due() == 1
    response = await stripe_client.get(
        "/v1/customers/user_1/upcoming-invoice", headers=bearer(billing_key)
    )
    assert response.status_code == 200, response.text
    plan_line, usage_line = response.json()["lines"]
    assert (plan_line["price"], plan_line["metered"]) == ("pro_monthly", False)
    lookup_key = await pool.fetchval(
        "SELECT lookup_key FROM metered_prices WHERE stripe_price_id = $1", item["price"]["id"]
    )
    assert usage_line["price"] == lookup_key
    assert usage_line["metered"] is True
    assert usage_line["quantity"] == 9
    assert usage_line["amount"] == 18
    entitlements = await stripe_client.get(
        "/v1/customers/user_1/entitlements", headers=bearer(billing_key)
    )
    estimate = feature(entitlements.json(), "ai_calls")["overage_billing"]
    assert isinstance(estimate, dict)
    assert estimate["estimated_amount"] == str(usage_line["amount"])
