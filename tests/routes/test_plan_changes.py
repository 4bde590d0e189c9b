"""Plan changes as Stripe sees them: what an upgrade is, currencies, retries after a decline,
and downgrades scheduled on subscriptions that already moved on."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer
from tests.routes.tiers import customer, mirrored, price_id, tiered
from tests.stripe_fakes import FakeStripe, stripe_error

DAY = 86_400


async def change(client: httpx.AsyncClient, key: str, price: str) -> httpx.Response:
    return await client.post(
        "/v1/customers/user_1/subscription/change", headers=bearer(key), json={"price": price}
    )


async def test_a_higher_tier_is_an_upgrade_whatever_the_interval(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Basic yearly → Enterprise monthly applies now and invoices the difference; Enterprise
    monthly → Basic yearly waits for the end of the paid period."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_yearly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)

    up = await change(stripe_client, billing_key, "enterprise_monthly")
    assert up.status_code == 200, up.text
    assert up.json()["change"] == {"direction": "upgrade", "effective": "now"}
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form["proration_behavior"] == "always_invoice"
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "enterprise"

    down = await change(stripe_client, billing_key, "basic_yearly")
    assert down.status_code == 200, down.text
    assert down.json()["change"] == {"direction": "downgrade", "effective": "period_end"}
    assert down.json()["subscription"]["price"] == "enterprise_monthly"
    assert down.json()["subscription"]["scheduled_change"]["price"] == "basic_yearly"


async def test_a_price_in_another_currency_is_refused_before_stripe_is_asked(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """USD Pro → EUR Pro is a 422 `currency-mismatch` naming both currencies; Stripe is not
    called and the subscription is unchanged."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)

    refused = await change(stripe_client, billing_key, "pro_monthly_eur")
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["type"] == "urn:billing-service:problem:currency-mismatch"
    assert problem["errors"] == [
        {"field": "price", "message": "is in EUR; the subscription is billed in USD"}
    ]
    assert "cancel the subscription and check out again" in problem["detail"]
    assert fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}") == []
    assert fake_stripe.calls_to("POST", "/v1/subscription_schedules") == []


async def test_upgrade_hints_offer_only_prices_in_the_customers_currency(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A USD Pro customer over the limit is offered Enterprise in USD, though the EUR price
    has a smaller number."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)

    body = {"customer_id": "user_1", "feature": "ai_calls", "amount": 1000}
    denied = await stripe_client.post("/v1/usage/check", headers=bearer(billing_key), json=body)
    assert denied.json()["allowed"] is False
    assert denied.json()["upgrade"] == {"plan": "enterprise", "price": "enterprise_monthly"}


async def test_a_retry_after_a_declined_upgrade_is_a_new_attempt_with_a_new_key(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Stripe replays a declined key for 24 hours; once the customer fixed their card, the
    next upgrade request uses a new key and goes through."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_monthly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)
    path = f"/v1/subscriptions/{subscription['id']}"
    fake_stripe.failures[path] = stripe_error(402, "card_error", "card_declined")

    declined = await change(stripe_client, billing_key, "pro_monthly")
    assert declined.status_code == 402
    fake_stripe.failures.clear()  # the customer updates their card in the portal
    retried = await change(stripe_client, billing_key, "pro_monthly")

    assert retried.status_code == 200, retried.text
    assert retried.json()["subscription"]["price"] == "pro_monthly"
    first, second = fake_stripe.calls_to("POST", path)
    assert first.idempotency_key != second.idempotency_key
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"


async def test_a_declined_upgrade_over_a_scheduled_downgrade_can_be_tried_again(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """The upgrade releases the scheduled downgrade, then the card is declined; the second
    attempt does not release the schedule again (Stripe would refuse) and goes through."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(stripe_customer, await price_id(pool, "pro_yearly"))
    await mirrored(stripe_client, pool, gateway, subscription)
    await change(stripe_client, billing_key, "pro_monthly")
    schedule_id = subscription["schedule"]
    path = f"/v1/subscriptions/{subscription['id']}"
    fake_stripe.failures[path] = stripe_error(402, "card_error", "card_declined")

    assert (await change(stripe_client, billing_key, "enterprise_monthly")).status_code == 402
    fake_stripe.failures.clear()
    retried = await change(stripe_client, billing_key, "enterprise_monthly")

    assert retried.status_code == 200, retried.text
    assert retried.json()["subscription"]["scheduled_change"] is None
    assert (
        len(fake_stripe.calls_to("POST", f"/v1/subscription_schedules/{schedule_id}/release")) == 1
    )
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "enterprise"


async def test_concurrent_duplicate_upgrades_reach_stripe_under_one_key(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Five identical upgrade requests at once share one idempotency key, so Stripe applies
    (and invoices) the change once; each answer is the upgrade or "already on that price"."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_monthly")
    )
    await mirrored(stripe_client, pool, gateway, subscription)

    answers = await asyncio.gather(
        *(change(stripe_client, billing_key, "pro_monthly") for _ in range(5))
    )

    assert {answer.status_code for answer in answers} <= {200, 409}
    assert 200 in {answer.status_code for answer in answers}
    updates = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert len({call.idempotency_key for call in updates}) == 1
    assert (await customer(stripe_client, billing_key))["plan"]["key"] == "pro"


async def test_a_change_that_already_happened_is_no_longer_shown_as_scheduled(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Pro yearly → Pro monthly is scheduled; once the schedule reaches that phase the
    subscription is monthly and nothing is pending. A second downgrade builds its phases from
    the phase in effect, not from the one that ended."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(stripe_customer, await price_id(pool, "pro_yearly"))
    await mirrored(stripe_client, pool, gateway, subscription)
    first = await change(stripe_client, billing_key, "pro_monthly")
    assert first.json()["change"] == {"direction": "downgrade", "effective": "period_end"}

    schedule = fake_stripe.advance_schedule(subscription["schedule"])
    await mirrored(stripe_client, pool, gateway, subscription)
    current = (await customer(stripe_client, billing_key))["subscription"]
    assert current["price"] == "pro_monthly"
    assert current["scheduled_change"] is None

    second = await change(stripe_client, billing_key, "basic_monthly")
    assert second.status_code == 200, second.text
    assert second.json()["subscription"]["scheduled_change"]["price"] == "basic_monthly"
    *_, update = fake_stripe.calls_to("POST", f"/v1/subscription_schedules/{schedule['id']}")
    in_effect = schedule["current_phase"]
    assert update.form["phases[0][start_date]"] == str(in_effect["start_date"])
    assert update.form["phases[0][items][0][price]"] == await price_id(pool, "pro_monthly")
    assert update.form["phases[1][items][0][price]"] == await price_id(pool, "basic_monthly")
    effective_at = second.json()["subscription"]["scheduled_change"]["effective_at"]
    assert effective_at == current["current_period_end"]


async def test_a_downgrade_during_a_trial_keeps_the_trial_discounts_and_other_items(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Scheduling Pro → Basic for the trial's end leaves the trialing subscription as it is:
    still trialing, with its coupon and its metered item; the next phase keeps both."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    trial_end = int(time.time()) + 14 * DAY
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly"), status="trialing",
        trial_end=trial_end, discounts=["di_fake_welcome"],
    )  # fmt: skip
    metered = fake_stripe.add_price(metered=True)
    fake_stripe.add_item(subscription, metered)
    await mirrored(stripe_client, pool, gateway, subscription)

    response = await change(stripe_client, billing_key, "basic_monthly")
    assert response.status_code == 200, response.text

    assert subscription["status"] == "trialing"
    assert subscription["trial_end"] == trial_end
    assert subscription["discounts"] == ["di_fake_welcome"]
    prices = [item["price"]["id"] for item in subscription["items"]["data"]]
    assert prices == [await price_id(pool, "pro_monthly"), metered]
    current, following = fake_stripe.schedules[subscription["schedule"]]["phases"]
    assert current["trial_end"] == trial_end
    assert current["end_date"] == trial_end
    assert [item["price"] for item in following["items"]] == [
        await price_id(pool, "basic_monthly"),
        metered,
    ]
    assert following["discounts"] == [{"discount": "di_fake_welcome"}]
    assert following["items"][1]["quantity"] is None
    view = await customer(stripe_client, billing_key)
    assert view["subscription"]["scheduled_change"]["price"] == "basic_monthly"
    assert view["plan"]["key"] == "pro"
