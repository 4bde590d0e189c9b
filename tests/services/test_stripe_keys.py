"""Idempotency keys after a Stripe failure: a new key once Stripe answered, the same key when it
did not, for the catalog sync, Stripe customers and Checkout sessions."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from billing_service.errors import StripeUnavailable
from billing_service.services import catalog_sync
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe, stripe_error


async def test_a_sync_answered_with_a_500_succeeds_next_time_under_a_new_key(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Stripe replays a 500 for its key; the next sync sends a new key and creates each product
    exactly once."""
    await apply(pool, None, example())
    fake_stripe.failures["/v1/products"] = stripe_error(500, "api_error")
    with pytest.raises(StripeUnavailable):
        await catalog_sync.sync_catalog(pool, gateway)
    [first_key] = {call.idempotency_key for call in fake_stripe.calls_to("POST", "/v1/products")}
    plan_id = await pool.fetchval("SELECT id FROM plans WHERE key = 'pro'")
    assert first_key == f"catalog:plan:{plan_id}:create"
    assert fake_stripe.products == {}

    fake_stripe.failures.clear()  # Stripe is back, and still keeps the 500 under that key
    report = await catalog_sync.sync_catalog(pool, gateway)

    assert len(report.done) == 10  # three products, four prices, a meter, two metered prices
    assert len(fake_stripe.products) == 3
    assert len(fake_stripe.prices) == 6
    retried = fake_stripe.calls_to("POST", "/v1/products")[3]
    assert retried.idempotency_key == f"{first_key}:retry:1"
    assert await pool.fetchval(
        "SELECT stripe_product_id FROM plans WHERE key = 'pro'"
    ) in fake_stripe.products  # fmt: skip
    async with pool.acquire() as conn:
        assert await catalog_sync.pending_work(conn) == []


async def test_an_update_answered_with_a_500_is_sent_again_under_a_new_key(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A rename Stripe failed with a 500 reaches Stripe on the next sync."""
    await apply(pool, gateway, example())
    product_id = await pool.fetchval("SELECT stripe_product_id FROM plans WHERE key = 'pro'")
    spec = example()
    renamed = spec.plans["pro"].model_copy(update={"name": "Pro Plus"})
    spec = spec.model_copy(update={"plans": spec.plans | {"pro": renamed}})
    await apply(pool, None, spec)
    fake_stripe.failures[f"/v1/products/{product_id}"] = stripe_error(500, "api_error")
    with pytest.raises(StripeUnavailable):
        await catalog_sync.sync_catalog(pool, gateway)
    assert fake_stripe.products[product_id]["name"] == "Pro"

    fake_stripe.failures.clear()
    await catalog_sync.sync_catalog(pool, gateway)

    assert fake_stripe.products[product_id]["name"] == "Pro Plus"
    first, *_, last = fake_stripe.calls_to("POST", f"/v1/products/{product_id}")
    assert last.idempotency_key == f"{first.idempotency_key}:retry:1"


async def test_a_sync_without_an_answer_keeps_its_key(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """After a connection failure the create may have happened: the next sync repeats the same
    key, so Stripe could only answer with the object it made."""
    await apply(pool, None, example())
    fake_stripe.failures["/v1/products"] = httpx.ConnectError("connection reset")
    with pytest.raises(StripeUnavailable):
        await catalog_sync.sync_catalog(pool, gateway)

    fake_stripe.failures.clear()
    await catalog_sync.sync_catalog(pool, gateway)

    calls = fake_stripe.calls_to("POST", "/v1/products")
    assert calls[0].idempotency_key == calls[3].idempotency_key
    assert len(fake_stripe.products) == 3


async def test_a_customer_create_answered_with_a_500_is_retried_under_a_new_key(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Two checkouts racing into a Stripe 500 move the create on once; the next checkout makes
    exactly one Stripe customer."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    fake_stripe.failures["/v1/customers"] = stripe_error(500, "api_error")
    failed = await asyncio.gather(
        *(
            stripe_client.post(
                "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
            )
            for _ in range(2)
        )
    )
    assert [r.status_code for r in failed] == [503, 503]

    fake_stripe.failures.clear()
    response = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )

    assert response.status_code == 201, response.text
    assert len(fake_stripe.customers) == 1
    our_id = await pool.fetchval("SELECT id FROM customers WHERE external_id = 'user_1'")
    last = fake_stripe.calls_to("POST", "/v1/customers")[-1]
    assert last.idempotency_key == f"customer:{our_id}:create:retry:1"


async def test_a_contact_change_answered_with_a_500_reaches_stripe_on_the_next_put(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """The same change sent again after a Stripe 500 is a new attempt: Stripe gets it."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    opened = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert opened.status_code == 201
    [stripe_id] = fake_stripe.customers
    fake_stripe.failures[f"/v1/customers/{stripe_id}"] = stripe_error(500, "api_error")
    change = {"email": "new@example.com", "name": "User_1"}
    failed = await stripe_client.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json=change
    )
    assert failed.status_code == 503

    fake_stripe.failures.clear()
    again = await stripe_client.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json=change
    )

    assert again.status_code == 200, again.text
    assert fake_stripe.customers[stripe_id]["email"] == "new@example.com"


async def test_a_checkout_retried_with_its_idempotency_key_after_a_500_opens_a_session(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """The caller's retry with the same Idempotency-Key after a Stripe 500 is a new attempt."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    headers = bearer(billing_key) | {"Idempotency-Key": "upgrade-user_1"}
    fake_stripe.failures["/v1/checkout/sessions"] = stripe_error(500, "api_error")
    failed = await stripe_client.post(
        "/v1/checkout/sessions", headers=headers, json=checkout_body()
    )
    assert failed.status_code == 503

    fake_stripe.failures.clear()
    retried = await stripe_client.post(
        "/v1/checkout/sessions", headers=headers, json=checkout_body()
    )
    replayed = await stripe_client.post(
        "/v1/checkout/sessions", headers=headers, json=checkout_body()
    )

    assert retried.status_code == 201, retried.text
    assert replayed.json() == retried.json()
    assert len(fake_stripe.sessions) == 1
