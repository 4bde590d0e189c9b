"""Trials at checkout: offered once per customer and plan, as Stripe's subscriptions record them,
unless BILLING_TRIAL_REPEATS allows repeats."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from billing_service.catalog_spec import CatalogSpec
from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client
from tests.routes.test_checkout import bearer, checkout_body
from tests.routes.tiers import tiers
from tests.services.test_catalog import apply
from tests.stripe_fakes import FakeStripe

TRIAL = "subscription_data[trial_period_days]"
DAY = 86_400


def with_trials(spec: CatalogSpec, days: int = 14) -> CatalogSpec:
    """The tiers catalog, every paid plan with a `days`-day trial."""
    plans = {
        key: plan.model_copy(update={"trial_days": days}) if plan.prices else plan
        for key, plan in spec.plans.items()
    }
    return spec.model_copy(update={"plans": plans})


async def customers_made(
    client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway, key: str,
    *customer_ids: str,
) -> None:  # fmt: skip
    """The tiers catalog with 14-day trials, synced to the fake Stripe, and the customers."""
    await apply(pool, gateway, with_trials(tiers()))
    for customer_id in customer_ids:
        made = await client.put(
            f"/v1/customers/{customer_id}", headers=bearer(key), json={"email": "a@example.com"}
        )
        assert made.status_code == 201, made.text


async def checkout(
    client: httpx.AsyncClient, key: str, customer_id: str, price: str, **extra: object
) -> httpx.Response:
    return await client.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json=checkout_body(customer_id, price) | extra,
    )


async def trial_sent(fake: FakeStripe, response: httpx.Response) -> str | None:
    """The `trial_period_days` Stripe received for the session the response names."""
    assert response.status_code == 201, response.text
    trial: str | None = fake.sessions[response.json()["id"]]["_trial_period_days"]
    return trial


async def trial_then_cancel(
    client: httpx.AsyncClient, fake: FakeStripe, key: str, customer_id: str, price: str
) -> None:
    """The customer checks out with the plan's trial, the success page mirrors the trialing
    subscription, and they cancel it at once."""
    opened = await checkout(client, key, customer_id, price)
    assert await trial_sent(fake, opened) == "14"
    fake.complete_checkout(opened.json()["id"])
    synced = await client.get(f"/v1/checkout/sessions/{opened.json()['id']}", headers=bearer(key))
    assert synced.json()["customer"]["subscription"]["status"] == "trialing"
    cancelled = await client.post(
        f"/v1/customers/{customer_id}/subscription/cancel",
        headers=bearer(key),
        json={"at_period_end": False},
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "canceled"


async def test_a_customer_who_had_a_trial_of_the_plan_checks_out_again_without_one(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Subscribe with the trial, cancel, check out again (any price of the plan): no trial is
    sent to Stripe. A customer who never had one still gets it."""
    await customers_made(stripe_client, pool, gateway, billing_key, "user_1", "user_2")
    await trial_then_cancel(stripe_client, fake_stripe, billing_key, "user_1", "pro_monthly")

    again = await checkout(stripe_client, billing_key, "user_1", "pro_monthly")
    other_price = await checkout(stripe_client, billing_key, "user_1", "pro_yearly")
    newcomer = await checkout(stripe_client, billing_key, "user_2", "pro_monthly")

    assert await trial_sent(fake_stripe, again) is None
    assert await trial_sent(fake_stripe, other_price) is None
    assert await trial_sent(fake_stripe, newcomer) == "14"


async def test_a_trial_of_one_plan_leaves_the_trial_of_another(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Trials are counted per plan: a customer who tried Basic may still try Pro."""
    await customers_made(stripe_client, pool, gateway, billing_key, "user_1")
    await trial_then_cancel(stripe_client, fake_stripe, billing_key, "user_1", "basic_monthly")

    pro = await checkout(stripe_client, billing_key, "user_1", "pro_monthly")

    assert await trial_sent(fake_stripe, pro) == "14"


async def test_an_explicit_trial_for_a_customer_who_had_one_is_refused(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """`trial_days` asked for a customer who had a trial of the plan is a 422 naming the field,
    before Stripe is called; `trial_days: 0` checks out without one."""
    await customers_made(stripe_client, pool, gateway, billing_key, "user_1")
    await trial_then_cancel(stripe_client, fake_stripe, billing_key, "user_1", "pro_monthly")
    sessions_before = len(fake_stripe.sessions)

    refused = await checkout(stripe_client, billing_key, "user_1", "pro_monthly", trial_days=30)
    without = await checkout(stripe_client, billing_key, "user_1", "pro_monthly", trial_days=0)

    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:billing-service:problem:validation-failed"
    assert [e["field"] for e in refused.json()["errors"]] == ["trial_days"]
    assert await trial_sent(fake_stripe, without) is None
    assert len(fake_stripe.sessions) == sessions_before + 1


async def test_a_trial_stripe_has_not_reported_yet_still_counts(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A trial subscription we have not mirrored yet (its webhook still on the way) is found in
    Stripe before a trial is offered, and mirrored."""
    await customers_made(stripe_client, pool, gateway, billing_key, "user_1")
    first = await checkout(stripe_client, billing_key, "user_1", "basic_monthly")
    assert first.status_code == 201
    stripe_customer = await pool.fetchval(
        "SELECT stripe_customer_id FROM customers WHERE external_id = 'user_1'"
    )
    pro = await pool.fetchval("SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_monthly'")
    tried = fake_stripe.add_subscription(
        stripe_customer, pro, status="trialing", trial_end=int(time.time()) + 14 * DAY
    )
    fake_stripe.subscriptions[tried["id"]].update(status="canceled", ended_at=int(time.time()))

    again = await checkout(stripe_client, billing_key, "user_1", "pro_monthly")

    assert await trial_sent(fake_stripe, again) is None
    assert await pool.fetchval(
        "SELECT status FROM subscriptions WHERE stripe_subscription_id = $1", tried["id"]
    ) == "canceled"  # fmt: skip


async def test_with_trial_repeats_a_customer_gets_the_trial_again(
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """BILLING_TRIAL_REPEATS=true offers the plan's trial, and honours `trial_days`, whatever
    trials the customer had before."""
    repeating = stripe_settings.model_copy(update={"trial_repeats": True})
    async with app_client(repeating) as client:
        await customers_made(client, pool, gateway, billing_key, "user_1")
        await trial_then_cancel(client, fake_stripe, billing_key, "user_1", "pro_monthly")

        again = await checkout(client, billing_key, "user_1", "pro_monthly")
        asked = await checkout(client, billing_key, "user_1", "pro_monthly", trial_days=30)

    assert await trial_sent(fake_stripe, again) == "14"
    assert await trial_sent(fake_stripe, asked) == "30"


async def test_concurrent_first_checkouts_of_a_new_customer_both_offer_the_trial(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Two checkouts opened at once, before any subscription exists, both offer the trial (as
    documented): the trial is known from subscriptions, and neither exists yet. Once one is
    completed and mirrored, no further checkout offers it."""
    await customers_made(stripe_client, pool, gateway, billing_key, "user_1")
    racing = await asyncio.gather(
        *(checkout(stripe_client, billing_key, "user_1", "pro_monthly") for _ in range(2))
    )
    assert [await trial_sent(fake_stripe, r) for r in racing] == ["14", "14"]

    fake_stripe.complete_checkout(racing[0].json()["id"])
    await stripe_client.get(
        f"/v1/checkout/sessions/{racing[0].json()['id']}", headers=bearer(billing_key)
    )
    await stripe_client.post(
        "/v1/customers/user_1/subscription/cancel",
        headers=bearer(billing_key),
        json={"at_period_end": False},
    )
    later = await checkout(stripe_client, billing_key, "user_1", "pro_monthly")
    assert await trial_sent(fake_stripe, later) is None
