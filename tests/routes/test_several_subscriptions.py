"""How the mirror reads Stripe: several subscriptions per customer, several items per
subscription, and since when a subscription is past due."""

from __future__ import annotations

import time

import asyncpg
import httpx

from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, checkout_body
from tests.routes.tiers import allowance, customer, mirrored, price_id, tiered
from tests.stripe_fakes import FakeStripe
from tests.test_openapi import assert_matches_schema

DAY = 86_400


async def test_a_newer_add_on_subscription_does_not_hide_the_paid_plan(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """An older active Pro subscription keeps granting Pro when a newer subscription to a
    price outside the catalog (an add-on sold in the dashboard) appears."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    now = int(time.time())
    pro = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly"), created=now - DAY
    )
    add_on = fake_stripe.add_subscription(stripe_customer, fake_stripe.add_price(), created=now)
    await mirrored(stripe_client, pool, gateway, add_on)

    view = await customer(stripe_client, billing_key)
    assert view["plan"]["key"] == "pro"
    assert view["subscription"]["price"] == "pro_monthly"
    assert (await allowance(stripe_client, billing_key, "ai_calls"))["limit"] == 500
    assert pro["status"] == "active"


async def test_a_newer_past_due_subscription_past_its_grace_does_not_hide_an_active_one(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Pro past due beyond the grace period grants nothing; the older active Basic still does."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    now = int(time.time())
    fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_monthly"), created=now - DAY
    )
    pro = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly"), status="past_due", created=now
    )
    await mirrored(stripe_client, pool, gateway, pro)
    await pool.execute(  # eight days pass; the grace period is seven
        "UPDATE subscriptions SET past_due_since = now() - interval '8 days' "
        "WHERE status = 'past_due'"
    )

    view = await customer(stripe_client, billing_key)
    assert view["plan"]["key"] == "basic"
    assert view["subscription"]["status"] == "active"
    assert (await allowance(stripe_client, billing_key, "ai_calls"))["limit"] == 100


async def test_of_two_granted_plans_the_best_applies_and_allowances_do_not_add_up(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Active Pro (older) and active Basic (newer): the customer gets Pro's 500 calls, not
    Basic's 100 and not 600, in the entitlements and in usage checks alike."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    now = int(time.time())
    fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly"), created=now - DAY
    )
    basic = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_monthly"), created=now
    )
    await mirrored(stripe_client, pool, gateway, basic)

    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"
    calls = await allowance(stripe_client, billing_key, "ai_calls")
    assert (calls["limit"], calls["remaining"]) == (500, 500)
    body = {"customer_id": "user_1", "feature": "ai_calls", "amount": 501}
    denied = await stripe_client.post("/v1/usage/check", headers=bearer(billing_key), json=body)
    assert denied.json()["allowed"] is False
    assert denied.json()["limit"] == 500


async def test_checkout_and_changes_act_on_the_subscription_carrying_the_plan(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """An add-on subscription alone does not block a plan checkout; once the customer has Pro,
    a plan change edits the Pro subscription, never the newer add-on."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    now = int(time.time())
    add_on = fake_stripe.add_subscription(
        stripe_customer, fake_stripe.add_price(), created=now - DAY
    )
    await mirrored(stripe_client, pool, gateway, add_on)
    opened = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert opened.status_code == 201, opened.text

    pro = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly"), created=now - 2 * DAY
    )
    await mirrored(stripe_client, pool, gateway, pro)
    changed = await stripe_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "pro_yearly"},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["subscription"]["price"] == "pro_yearly"
    assert pro["items"]["data"][0]["price"]["id"] == await price_id(pool, "pro_yearly")
    assert fake_stripe.calls_to("POST", f"/v1/subscriptions/{add_on['id']}") == []
    again = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert again.status_code == 409
    assert again.json()["type"] == "urn:billing-service:problem:subscription-exists"


async def test_the_plan_comes_from_the_catalog_item_whatever_the_item_order(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A metered item listed first and a licensed add-on with 3 seats do not hide the Pro
    item: the customer gets Pro and every item is shown with its own quantity."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    fake_stripe.add_item(subscription, fake_stripe.add_price(metered=True), first=True)
    fake_stripe.add_item(subscription, fake_stripe.add_price(amount=300), quantity=3)
    await mirrored(stripe_client, pool, gateway, subscription)

    view = await customer(stripe_client, billing_key)
    assert view["plan"]["key"] == "pro"
    assert view["subscription"]["price"] == "pro_monthly"
    assert view["subscription"]["items"] == [
        {"price": None, "quantity": None, "metered": True},
        {"price": "pro_monthly", "quantity": 1, "metered": False},
        {"price": None, "quantity": 3, "metered": False},
    ]
    assert_matches_schema(view, "Customer")
    assert (await allowance(stripe_client, billing_key, "ai_calls"))["limit"] == 500


async def test_a_plan_change_edits_the_plan_item_and_keeps_the_others(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Basic → Pro on a subscription whose first item is metered: Stripe is asked to change
    the Basic item, and the metered item stays as it was."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_monthly")
    )
    [basic_item] = subscription["items"]["data"]
    metered_price = fake_stripe.add_price(metered=True)
    metered_item = fake_stripe.add_item(subscription, metered_price, first=True)
    await mirrored(stripe_client, pool, gateway, subscription)

    response = await stripe_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "pro_monthly"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["change"] == {"direction": "upgrade", "effective": "now"}
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form["items[0][id]"] == basic_item["id"]
    assert [item["price"]["id"] for item in subscription["items"]["data"]] == [
        metered_price,
        await price_id(pool, "pro_monthly"),
    ]
    assert subscription["items"]["data"][0]["id"] == metered_item["id"]
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"


async def test_the_grace_period_runs_from_when_stripe_failed_the_payment_not_from_the_webhook(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A renewal charge failed eight days ago; its webhook arrives only now. The seven-day
    grace has already run out: the customer is on the free plan at once."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"

    failed_at = int(time.time()) - 8 * DAY
    invoice = fake_stripe.renewal_payment_fails(subscription["id"], attempted_at=failed_at)
    await mirrored(stripe_client, pool, gateway, invoice, "invoice.payment_failed")

    view = await customer(stripe_client, billing_key)
    assert view["subscription"]["status"] == "past_due"
    assert view["plan"]["key"] == "free"
    since = await pool.fetchval("SELECT extract(epoch FROM past_due_since) FROM subscriptions")
    assert int(since) == failed_at


async def test_a_recent_payment_failure_keeps_the_plan_through_the_grace_period(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A charge that failed two days ago leaves five days of grace: the plan stays, and a
    later sync never moves the start of the grace period."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    failed_at = int(time.time()) - 2 * DAY
    invoice = fake_stripe.renewal_payment_fails(subscription["id"], attempted_at=failed_at)
    await mirrored(stripe_client, pool, gateway, invoice, "invoice.payment_failed")
    await mirrored(stripe_client, pool, gateway, subscription)

    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"
    since = await pool.fetchval("SELECT extract(epoch FROM past_due_since) FROM subscriptions")
    assert int(since) == failed_at
