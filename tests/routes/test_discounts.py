"""Coupons and promotion codes synced to Stripe, Checkout with a promotion code, and Stripe Tax
(`BILLING_STRIPE_TAX`) in Checkout and plan changes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.routes.tiers import mirrored, price_id, tiered
from tests.stripe_fakes import FakeStripe, stripe_error

COUPON = {"id": "launch20", "name": "Launch", "percent_off": 20, "duration": "once"}


async def coupon_and_code(client: httpx.AsyncClient, admin_key: str) -> None:
    created = await client.post("/v1/coupons", headers=bearer(admin_key), json=COUPON)
    assert created.status_code == 201, created.text
    code = await client.post(
        "/v1/promotion-codes",
        headers=bearer(admin_key),
        json={"code": "LAUNCH20", "coupon": "launch20", "max_redemptions": 100},
    )
    assert code.status_code == 201, code.text


async def test_coupons_and_promotion_codes_reach_stripe_once_with_idempotency_keys(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, fake_stripe: FakeStripe,
    admin_key: str,
) -> None:  # fmt: skip
    """A coupon is created in Stripe under its own id and a promotion code for it with
    `promotion[type]=coupon`, each with an idempotency key; both are listed with their Stripe
    ids; the same request again changes nothing and calls Stripe no more; the same id with
    other terms is a 409."""
    await coupon_and_code(stripe_client, admin_key)
    [coupon_call] = fake_stripe.calls_to("POST", "/v1/coupons")
    assert coupon_call.form == {
        "id": "launch20",
        "duration": "once",
        "name": "Launch",
        "percent_off": "20.0",
    }
    coupon_row = await pool.fetchval("SELECT id FROM coupons")
    assert coupon_call.idempotency_key == f"coupon:{coupon_row}"
    [code_call] = fake_stripe.calls_to("POST", "/v1/promotion_codes")
    assert code_call.form == {
        "code": "LAUNCH20",
        "promotion[type]": "coupon",
        "promotion[coupon]": "launch20",
        "max_redemptions": "100",
    }
    assert code_call.idempotency_key is not None
    assert code_call.idempotency_key.startswith("promotion_code:")

    again = await stripe_client.post("/v1/coupons", headers=bearer(admin_key), json=COUPON)
    assert again.status_code == 200
    other = await stripe_client.post(
        "/v1/coupons", headers=bearer(admin_key), json=COUPON | {"percent_off": 25}
    )
    assert other.status_code == 409
    assert len(fake_stripe.calls_to("POST", "/v1/coupons")) == 1

    coupons = (await stripe_client.get("/v1/coupons", headers=bearer(admin_key))).json()["data"]
    assert [(c["id"], c["percent_off"], c["stripe_coupon_id"]) for c in coupons] == [
        ("launch20", 20.0, "launch20")
    ]
    codes = await stripe_client.get("/v1/promotion-codes", headers=bearer(admin_key))
    [code] = codes.json()["data"]
    assert code["code"] == "LAUNCH20"
    assert code["stripe_promotion_code_id"] in fake_stripe.promotion_codes


async def test_a_coupon_stripe_refused_is_finished_by_the_same_request_again(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, fake_stripe: FakeStripe,
    admin_key: str,
) -> None:  # fmt: skip
    """Stripe failing a coupon's create leaves it recorded without a Stripe id; the same POST
    again creates it in Stripe under a new idempotency key (Stripe keeps the failure under the
    first) and records it."""
    fake_stripe.failures["/v1/coupons"] = stripe_error(500, "api_error")
    failed = await stripe_client.post("/v1/coupons", headers=bearer(admin_key), json=COUPON)
    assert failed.status_code >= 500
    assert await pool.fetchval("SELECT stripe_coupon_id FROM coupons") is None
    del fake_stripe.failures["/v1/coupons"]
    again = await stripe_client.post("/v1/coupons", headers=bearer(admin_key), json=COUPON)
    assert again.status_code == 200, again.text
    assert again.json()["stripe_coupon_id"] == "launch20"
    assert list(fake_stripe.coupons) == ["launch20"]


async def test_bad_coupons_and_codes_are_422s_naming_the_field(
    stripe_client: httpx.AsyncClient, fake_stripe: FakeStripe, admin_key: str
) -> None:
    """An amount off without a currency and a code for an unknown coupon are refused before
    Stripe is called."""
    no_currency = await stripe_client.post(
        "/v1/coupons",
        headers=bearer(admin_key),
        json={"id": "ten", "amount_off": 1000, "duration": "once"},
    )
    assert no_currency.status_code == 422
    unknown = await stripe_client.post(
        "/v1/promotion-codes", headers=bearer(admin_key), json={"code": "X1", "coupon": "nope"}
    )
    assert unknown.status_code == 422
    assert [e["field"] for e in unknown.json()["errors"]] == ["coupon"]
    assert fake_stripe.calls == []


async def test_checkout_with_a_promotion_code_sends_stripes_promotion_code_id(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway,
    fake_stripe: FakeStripe, admin_key: str, billing_key: str,
) -> None:  # fmt: skip
    """The code the customer brought (in any case) becomes `discounts[0][promotion_code]` with
    Stripe's id; an unknown code, or one sent with allow_promotion_codes, is a 422 naming
    `promotion_code`; no tax fields are sent while Stripe Tax is off."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await coupon_and_code(stripe_client, admin_key)
    promo_id = next(iter(fake_stripe.promotion_codes))
    for bad in ({"promotion_code": "NOPE"},
                {"promotion_code": "LAUNCH20", "allow_promotion_codes": True}):  # fmt: skip
        refused = await stripe_client.post(
            "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body() | bad
        )
        assert refused.status_code == 422, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == ["promotion_code"]
    assert fake_stripe.calls_to("POST", "/v1/checkout/sessions") == []
    response = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key),
        json=checkout_body() | {"promotion_code": "launch20"},
    )
    assert response.status_code == 201, response.text
    [call] = fake_stripe.calls_to("POST", "/v1/checkout/sessions")
    assert call.form["discounts[0][promotion_code]"] == promo_id
    assert "allow_promotion_codes" not in call.form
    assert not any(k.startswith(("automatic_tax", "tax_id_collection")) for k in call.form)
    session = fake_stripe.sessions[response.json()["id"]]
    assert session["discounts"] == [{"coupon": None, "promotion_code": promo_id}]


@pytest.fixture
async def tax_client(
    stripe_settings: Settings, pool: asyncpg.Pool, fake_stripe: FakeStripe
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with `BILLING_STRIPE_TAX` on."""
    async with app_client(stripe_settings.model_copy(update={"stripe_tax": True})) as client:
        yield client


async def test_checkout_with_a_promotion_code_and_automatic_tax_sends_both_to_stripe(
    tax_client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway,
    fake_stripe: FakeStripe, admin_key: str, billing_key: str,
) -> None:  # fmt: skip
    """With Stripe Tax on, a checkout with a promotion code sends the code's Stripe id,
    automatic tax, tax id collection, a required billing address, and lets Checkout save the
    existing customer's address and name; the session Stripe made has automatic tax on."""
    await seeded(tax_client, pool, gateway, billing_key, "user_1")
    await coupon_and_code(tax_client, admin_key)
    response = await tax_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key),
        json=checkout_body() | {"promotion_code": "LAUNCH20"},
    )
    assert response.status_code == 201, response.text
    [call] = fake_stripe.calls_to("POST", "/v1/checkout/sessions")
    sent = {
        k: v
        for k, v in call.form.items()
        if not k.startswith(("metadata", "subscription_data", "line_items"))
    }
    assert sent == {
        "mode": "subscription",
        "customer": next(iter(fake_stripe.customers)),
        "success_url": checkout_body()["success_url"],
        "cancel_url": checkout_body()["cancel_url"],
        "client_reference_id": call.form["client_reference_id"],
        "discounts[0][promotion_code]": next(iter(fake_stripe.promotion_codes)),
        "automatic_tax[enabled]": "true",
        "tax_id_collection[enabled]": "true",
        "billing_address_collection": "required",
        "customer_update[address]": "auto",
        "customer_update[name]": "auto",
    }
    session = fake_stripe.sessions[response.json()["id"]]
    assert session["automatic_tax"]["enabled"] is True
    assert session["tax_id_collection"]["enabled"] is True


async def test_a_plan_change_keeps_automatic_tax_on(
    tax_client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway,
    fake_stripe: FakeStripe, billing_key: str,
) -> None:  # fmt: skip
    """With Stripe Tax on, an upgrade applied now sends `automatic_tax[enabled]=true` with the
    subscription update."""
    stripe_customer = await tiered(tax_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "basic_yearly")
    )
    await mirrored(tax_client, pool, gateway, subscription)
    changed = await tax_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "enterprise_monthly"},
    )
    assert changed.status_code == 200, changed.text
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form["automatic_tax[enabled]"] == "true"
    assert update.form["proration_behavior"] == "always_invoice"


async def test_a_downgrade_scheduled_for_period_end_keeps_automatic_tax_on(
    tax_client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway,
    fake_stripe: FakeStripe, billing_key: str,
) -> None:  # fmt: skip
    """With Stripe Tax on, both phases of the schedule that switches a downgrade at period end
    carry `automatic_tax[enabled]=true`."""
    stripe_customer = await tiered(tax_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "enterprise_monthly")
    )
    await mirrored(tax_client, pool, gateway, subscription)
    changed = await tax_client.post(
        "/v1/customers/user_1/subscription/change",
        headers=bearer(billing_key),
        json={"price": "basic_yearly"},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["change"] == {"direction": "downgrade", "effective": "period_end"}
    [update] = fake_stripe.calls_to("POST", "/v1/subscription_schedules/")
    assert update.form["phases[0][automatic_tax][enabled]"] == "true"
    assert update.form["phases[1][automatic_tax][enabled]"] == "true"
