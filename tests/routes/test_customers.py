"""Customers and their subscription: upsert, views, plan changes, cancellation, resumption."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe, stripe_error


async def subscribed(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, key: str, price: str
) -> None:
    """user_1 checks out `price`, pays, and the success page syncs the subscription."""
    session = await client.post(
        "/v1/checkout/sessions", headers=bearer(key), json=checkout_body(price=price)
    )
    fake_stripe.complete_checkout(session.json()["id"])
    await client.get(f"/v1/checkout/sessions/{session.json()['id']}", headers=bearer(key))


async def test_put_customer_is_an_idempotent_upsert(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """201 then 200; the view shows the default plan, and no Stripe id before a checkout."""
    await apply(pool, None, example())
    body = {"email": "ada@example.com", "name": "Ada", "metadata": {"team": "core"}}
    created = await client.put("/v1/customers/org:42@app", headers=bearer(billing_key), json=body)
    assert created.status_code == 201
    again = await client.put("/v1/customers/org:42@app", headers=bearer(billing_key), json=body)
    assert again.status_code == 200
    view = (await client.get("/v1/customers/org:42@app", headers=bearer(billing_key))).json()
    assert view["customer_id"] == "org:42@app"
    assert view["plan"] == {"key": "free", "name": "Free"}
    assert view["subscription"] is None
    assert view["metadata"] == {"team": "core"}
    assert view["stripe_customer_id"] is None
    assert "cus_" not in str(view)
    assert await pool.fetchval("SELECT count(*) FROM customers") == 1


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/customers/bad%20id", {"email": "a@example.com"}, "customer_id"),
        ("/v1/customers/" + "x" * 256, {"email": "a@example.com"}, "customer_id"),
        ("/v1/customers/ok", {"email": "not-an-email"}, "email"),
        ("/v1/customers/ok", {"email": "a@example.com", "metadata": {"k": 1}}, "metadata.k"),
    ],
)
async def test_invalid_customers_are_422(
    client: httpx.AsyncClient, billing_key: str, path: str, body: dict[str, object], field: str
) -> None:
    """Customer ids follow `[A-Za-z0-9_.:@-]{1,255}`; emails must be emails."""
    response = await client.put(path, headers=bearer(billing_key), json=body)
    assert response.status_code == 422
    assert field in [error["field"] for error in response.json()["errors"]]


async def test_unknown_customer_and_missing_subscription_are_404(
    client: httpx.AsyncClient, billing_key: str
) -> None:
    """Reading a customer never PUT, or the subscription of one never subscribed, is a 404."""
    assert (await client.get("/v1/customers/ghost", headers=bearer(billing_key))).status_code == 404
    await client.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json={"email": "a@example.com"}
    )
    response = await client.get("/v1/customers/user_1/subscription", headers=bearer(billing_key))
    assert response.status_code == 404
    orders = await client.get("/v1/customers/user_1/orders", headers=bearer(billing_key))
    assert orders.json() == {"data": [], "has_more": False, "next_cursor": None}


async def test_customer_and_subscription_show_their_stripe_ids(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """After a checkout, the customer, its subscription and the subscription route name the
    Stripe customer and subscription, so support staff can find them in Stripe's dashboard."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    (stripe_customer,) = fake_stripe.customers
    (stripe_subscription,) = fake_stripe.subscriptions
    view = (await stripe_client.get("/v1/customers/user_1", headers=bearer(billing_key))).json()
    assert view["stripe_customer_id"] == stripe_customer
    assert view["subscription"]["stripe_subscription_id"] == stripe_subscription
    alone = await stripe_client.get(
        "/v1/customers/user_1/subscription", headers=bearer(billing_key)
    )
    assert alone.json()["stripe_subscription_id"] == stripe_subscription


async def test_stripe_ids_are_read_only(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    billing_key: str,
) -> None:
    """A PUT that tries to set the Stripe customer id is a 422 naming it; the id is unchanged."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    response = await stripe_client.put(
        "/v1/customers/user_1", headers=bearer(billing_key),
        json={"email": "a@example.com", "stripe_customer_id": "cus_someone_else"},
    )  # fmt: skip
    assert response.status_code == 422
    assert "stripe_customer_id" in [error["field"] for error in response.json()["errors"]]
    view = (await stripe_client.get("/v1/customers/user_1", headers=bearer(billing_key))).json()
    assert view["stripe_customer_id"] != "cus_someone_else"


async def test_email_change_reaches_the_stripe_customer(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Once a Stripe customer exists, a changed email is sent to Stripe; an unchanged PUT is not."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    body = {"email": "user_1@example.com", "name": "User_1"}
    await stripe_client.put("/v1/customers/user_1", headers=bearer(billing_key), json=body)
    assert fake_stripe.calls_to("POST", "/v1/customers/") == []
    await stripe_client.put(
        "/v1/customers/user_1",
        headers=bearer(billing_key),
        json=body | {"email": "new@example.com"},
    )
    [update] = fake_stripe.calls_to("POST", "/v1/customers/")
    assert update.form == {"email": "new@example.com", "name": "User_1"}


async def test_upgrade_switches_now_and_invoices_the_proration(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Monthly → yearly is an upgrade: immediate, prorated, invoiced now, paid or refused; the
    monthly metered overage item gives way to Pro's yearly one in the same update."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    [subscription] = fake_stripe.subscriptions.values()
    plan_item, metered_item = subscription["items"]["data"]
    yearly = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_yearly'"
    )

    response = await stripe_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "pro_yearly"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["change"] == {"direction": "upgrade", "effective": "now"}
    assert response.json()["subscription"]["price"] == "pro_yearly"
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form == {
        "items[0][id]": plan_item["id"],
        "items[0][price]": yearly,
        "items[1][id]": metered_item["id"],
        "items[1][deleted]": "true",
        "items[2][price]": await pool.fetchval(
            "SELECT stripe_price_id FROM metered_prices "
            "WHERE lookup_key = 'pro:ai_calls:overage:year' AND active"
        ),
        "proration_behavior": "always_invoice",
        "payment_behavior": "error_if_incomplete",
    }


async def test_downgrade_waits_for_the_period_end_through_a_schedule(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Yearly → monthly keeps the paid period, then switches without proration, the yearly
    metered overage item replaced by the monthly one."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_yearly")
    [subscription] = fake_stripe.subscriptions.values()
    item = subscription["items"]["data"][0]
    monthly = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_monthly'"
    )
    metered = {
        interval: await pool.fetchval(
            "SELECT stripe_price_id FROM metered_prices WHERE lookup_key = $1 AND active",
            f"pro:ai_calls:overage:{interval}",
        )
        for interval in ("month", "year")
    }

    response = await stripe_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "pro_monthly"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["change"] == {"direction": "downgrade", "effective": "period_end"}
    assert response.json()["subscription"]["price"] == "pro_yearly"
    assert response.json()["subscription"]["scheduled_change"]["price"] == "pro_monthly"
    assert fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}") == []
    [create] = fake_stripe.calls_to("POST", "/v1/subscription_schedules")[:1]
    assert create.form == {"from_subscription": subscription["id"]}
    schedule_id = subscription["schedule"]
    [phases] = fake_stripe.calls_to("POST", f"/v1/subscription_schedules/{schedule_id}")
    assert phases.form == {
        "end_behavior": "release",
        "phases[0][items][0][price]": item["price"]["id"],
        "phases[0][items][0][quantity]": "1",
        "phases[0][items][1][price]": metered["year"],
        "phases[0][start_date]": str(item["current_period_start"]),
        "phases[0][end_date]": str(item["current_period_end"]),
        "phases[1][items][0][price]": monthly,
        "phases[1][items][0][quantity]": "1",
        "phases[1][items][1][price]": metered["month"],
        "phases[1][proration_behavior]": "none",
    }


async def test_downgrade_now_when_configured_credits_the_proration(
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """BILLING_DOWNGRADE_AT=now switches at once with a proration credit."""
    async with app_client(stripe_settings.model_copy(update={"downgrade_at": "now"})) as client:
        await seeded(client, pool, gateway, billing_key, "user_1")
        await subscribed(client, fake_stripe, billing_key, "pro_yearly")
        response = await client.post(
            "/v1/customers/user_1/subscription/change",
            headers=bearer(billing_key),
            json={"price": "pro_monthly"},
        )
    assert response.json()["change"] == {"direction": "downgrade", "effective": "now"}
    [subscription] = fake_stripe.subscriptions.values()
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form["proration_behavior"] == "create_prorations"
    assert "payment_behavior" not in update.form


async def test_declined_upgrade_is_402_and_changes_nothing(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A card declined for the prorated invoice leaves the subscription as it was."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    [subscription] = fake_stripe.subscriptions.values()
    fake_stripe.failures[f"/v1/subscriptions/{subscription['id']}"] = stripe_error(
        402, "card_error", "card_declined"
    )
    response = await stripe_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "pro_yearly"},
    )
    assert response.status_code == 402
    assert response.json()["type"] == "urn:billing-service:problem:payment-failed"
    assert response.json()["detail"] == "Your card was declined."
    current = await stripe_client.get(
        "/v1/customers/user_1/subscription", headers=bearer(billing_key)
    )
    assert current.json()["price"] == "pro_monthly"


async def test_cancel_at_period_end_keeps_the_plan_and_resume_undoes_it(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A pending cancellation keeps the paid plan; resuming clears it; resuming twice is 409."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    cancel = await stripe_client.post(
        "/v1/customers/user_1/subscription/cancel",
        headers=bearer(billing_key),
        json={"at_period_end": True},
    )
    assert cancel.status_code == 200
    assert cancel.json()["cancel_at_period_end"] is True
    view = (await stripe_client.get("/v1/customers/user_1", headers=bearer(billing_key))).json()
    assert view["plan"]["key"] == "pro"
    [subscription] = fake_stripe.subscriptions.values()
    assert fake_stripe.calls[-1].form == {"cancel_at_period_end": "true"}

    resumed = await stripe_client.post(
        "/v1/customers/user_1/subscription/resume", headers=bearer(billing_key)
    )
    assert resumed.status_code == 200
    assert resumed.json()["cancel_at_period_end"] is False
    assert fake_stripe.calls[-1].form == {"cancel_at_period_end": "false"}
    twice = await stripe_client.post(
        "/v1/customers/user_1/subscription/resume", headers=bearer(billing_key)
    )
    assert twice.status_code == 409
    assert subscription["cancel_at_period_end"] is False


async def test_cancel_now_returns_the_customer_to_the_default_plan(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """An immediate cancellation ends the subscription and the paid plan with it."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    response = await stripe_client.post(
        "/v1/customers/user_1/subscription/cancel",
        headers=bearer(billing_key),
        json={"at_period_end": False},
    )
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    [subscription] = fake_stripe.subscriptions.values()
    assert fake_stripe.calls_to("DELETE", f"/v1/subscriptions/{subscription['id']}")
    view = (await stripe_client.get("/v1/customers/user_1", headers=bearer(billing_key))).json()
    assert view["plan"]["key"] == "free"
    again = await stripe_client.post(
        "/v1/customers/user_1/subscription/cancel",
        headers=bearer(billing_key),
        json={"at_period_end": False},
    )
    assert again.status_code == 409
    assert again.json()["type"] == "urn:billing-service:problem:no-active-subscription"
