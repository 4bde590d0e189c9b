"""Plan changes carry the metered overage price: the new plan's, for the new interval, in the
same update as the plan's price, and in the next phase of a scheduled downgrade."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.catalog_spec import load_catalog_yaml
from billing_service.config import Settings
from billing_service.errors import StripeRequestFailed
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client
from tests.routes.test_checkout import bearer
from tests.routes.tiers import mirrored, price_id
from tests.services.test_catalog import apply
from tests.stripe_fakes import MIXED_INTERVALS, FakeStripe

BILLED_YAML = """
features:
  ai_calls: {name: AI calls, kind: metered, unit: call}
plans:
  free:
    name: Free
    default: true
    display_order: 0
    features:
      ai_calls: {limit: 5, reset: month}
  starter:
    name: Starter
    display_order: 1
    features:
      ai_calls: {limit: 50, reset: month}
    prices:
      starter_monthly: {amount: 500, currency: usd, interval: month}
  basic:
    name: Basic
    display_order: 2
    features:
      ai_calls:
        limit: 100
        reset: month
        overage: bill
        overage_price: {amount_per_unit: 3, currency: usd}
    prices:
      basic_monthly: {amount: 900, currency: usd, interval: month}
  pro:
    name: Pro
    display_order: 3
    features:
      ai_calls:
        limit: 500
        reset: month
        overage: bill
        overage_price: {amount_per_unit: 2, currency: usd}
    prices:
      pro_monthly: {amount: 1900, currency: usd, interval: month}
      pro_yearly: {amount: 19000, currency: usd, interval: year}
"""


async def metered(pool: asyncpg.Pool, lookup_key: str) -> str:
    """The Stripe id of a plan's metered overage price."""
    found: str = await pool.fetchval(
        "SELECT stripe_price_id FROM metered_prices WHERE lookup_key = $1 AND active", lookup_key
    )
    assert found is not None
    return found


async def on_pro_monthly(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake: FakeStripe,
    key: str,
    *extra_prices: str,
) -> dict[str, Any]:
    """user_1 subscribed to Pro monthly as checkout leaves it (the plan's price and its metered
    price for the month), plus `extra_prices`, mirrored by the webhook worker."""
    await apply(pool, gateway, load_catalog_yaml(BILLED_YAML))
    await client.put("/v1/customers/user_1", headers=bearer(key), json={"email": "a@example.com"})
    opened = await client.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json={"customer_id": "user_1", "price": "pro_monthly",
              "success_url": "https://app.example.com/done",
              "cancel_url": "https://app.example.com/"},
    )  # fmt: skip
    assert opened.status_code == 201, opened.text
    session = fake.complete_checkout(opened.json()["id"])
    subscription = fake.subscriptions[session["subscription"]]
    for price in extra_prices:
        fake.add_item(subscription, price)
    await mirrored(client, pool, gateway, subscription)
    return subscription


def prices_of(subscription: dict[str, Any]) -> list[str]:
    return [item["price"]["id"] for item in subscription["items"]["data"]]


async def change(client: httpx.AsyncClient, key: str, price: str) -> httpx.Response:
    return await client.post(
        "/v1/customers/user_1/subscription/change", headers=bearer(key), json={"price": price}
    )


async def test_monthly_to_yearly_swaps_the_metered_price_in_the_same_update(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Pro monthly (with its monthly metered item, as checkout made it) → Pro yearly sends one
    update: the plan item on the yearly price, the monthly metered item deleted, Pro's yearly
    metered price added without a quantity; Stripe accepts it and the mirror follows."""
    subscription = await on_pro_monthly(stripe_client, pool, gateway, fake_stripe, billing_key)
    plan_item, metered_item = subscription["items"]["data"]
    assert metered_item["price"]["id"] == await metered(pool, "pro:ai_calls:overage:month")

    response = await change(stripe_client, billing_key, "pro_yearly")

    assert response.status_code == 200, response.text
    assert response.json()["change"] == {"direction": "upgrade", "effective": "now"}
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    yearly_metered = await metered(pool, "pro:ai_calls:overage:year")
    assert {k: v for k, v in update.form.items() if k.startswith("items")} == {
        "items[0][id]": plan_item["id"],
        "items[0][price]": await price_id(pool, "pro_yearly"),
        "items[1][id]": metered_item["id"],
        "items[1][deleted]": "true",
        "items[2][price]": yearly_metered,
    }
    assert prices_of(subscription) == [await price_id(pool, "pro_yearly"), yearly_metered]
    assert "quantity" not in subscription["items"]["data"][1]
    view = response.json()["subscription"]
    assert [item["metered"] for item in view["items"]] == [False, True]


async def test_stripe_refuses_a_yearly_plan_item_beside_a_monthly_metered_item(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Switching only the plan item to yearly (what changes did before) leaves a monthly metered
    item beside it: a classic subscription refuses that, and nothing changes."""
    subscription = await on_pro_monthly(stripe_client, pool, gateway, fake_stripe, billing_key)
    before = prices_of(subscription)
    plan_item = subscription["items"]["data"][0]

    with pytest.raises(StripeRequestFailed) as refused:
        await gateway.change_subscription_price(
            subscription["id"], item_id=plan_item["id"],
            price=await price_id(pool, "pro_yearly"), proration_behavior="always_invoice",
            idempotency_key="test:mixed-intervals",
        )  # fmt: skip

    assert MIXED_INTERVALS in str(refused.value.__cause__)
    assert prices_of(subscription) == before


async def test_an_immediate_change_to_a_plan_without_billed_overage_removes_the_metered_item(
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """With BILLING_DOWNGRADE_AT=now, Pro → Starter (no billed overage) deletes the metered item
    in the same update and adds none; a metered price from outside the catalog stays."""
    outside = fake_stripe.add_price(metered=True)
    async with app_client(stripe_settings.model_copy(update={"downgrade_at": "now"})) as client:
        subscription = await on_pro_monthly(
            client, pool, gateway, fake_stripe, billing_key, outside
        )
        metered_item = subscription["items"]["data"][1]
        response = await change(client, billing_key, "starter_monthly")

    assert response.status_code == 200, response.text
    assert response.json()["change"] == {"direction": "downgrade", "effective": "now"}
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form["items[1][id]"] == metered_item["id"]
    assert update.form["items[1][deleted]"] == "true"
    assert "items[2][price]" not in update.form
    assert prices_of(subscription) == [await price_id(pool, "starter_monthly"), outside]


async def test_a_scheduled_downgrade_gives_the_next_phase_the_new_plans_metered_price(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Pro monthly → Basic monthly waits for the period end: the phase in effect keeps Pro's
    metered price, the next one carries Basic's instead (and the outside add-on in both);
    when the phase comes, the subscription bills Basic's overage."""
    addon = fake_stripe.add_price(amount=300)
    subscription = await on_pro_monthly(
        stripe_client, pool, gateway, fake_stripe, billing_key, addon
    )

    response = await change(stripe_client, billing_key, "basic_monthly")

    assert response.status_code == 200, response.text
    assert response.json()["change"] == {"direction": "downgrade", "effective": "period_end"}
    pro_metered = await metered(pool, "pro:ai_calls:overage:month")
    basic_metered = await metered(pool, "basic:ai_calls:overage:month")
    schedule = fake_stripe.schedules[subscription["schedule"]]
    current, following = schedule["phases"]
    assert [i["price"] for i in current["items"]] == [
        await price_id(pool, "pro_monthly"),
        pro_metered,
        addon,
    ]
    assert [(i["price"], i["quantity"]) for i in following["items"]] == [
        (await price_id(pool, "basic_monthly"), 1),
        (addon, 1),
        (basic_metered, None),
    ]
    fake_stripe.advance_schedule(schedule["id"])
    assert sorted(prices_of(subscription)) == sorted(
        [await price_id(pool, "basic_monthly"), addon, basic_metered]
    )
