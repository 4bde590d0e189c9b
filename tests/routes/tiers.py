"""A catalog with three paid tiers, two currencies and a billing-period allowance, and helpers
to put subscriptions in the fake Stripe and let the webhook worker mirror them."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from billing_service.catalog_spec import CatalogSpec, load_catalog_yaml
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer
from tests.routes.test_webhooks import drain, post_event, stripe_price
from tests.services.test_catalog import apply
from tests.stripe_fakes import stripe_event

TIERS_YAML = """
features:
  ai_calls: {name: AI calls, kind: metered, unit: call}
  seats: {name: Seats, kind: metered, unit: seat}
plans:
  free:
    name: Free
    default: true
    display_order: 0
    features:
      ai_calls: {limit: 5, reset: month}
      seats: {limit: 1, reset: billing_period}
  basic:
    name: Basic
    display_order: 1
    features:
      ai_calls: {limit: 100, reset: month}
      seats: {limit: 3, reset: billing_period}
    prices:
      basic_monthly: {amount: 900, currency: usd, interval: month}
      basic_yearly: {amount: 9000, currency: usd, interval: year}
  pro:
    name: Pro
    display_order: 2
    features:
      ai_calls: {limit: 500, reset: month}
      seats: {limit: 10, reset: billing_period}
    prices:
      pro_monthly: {amount: 1900, currency: usd, interval: month}
      pro_yearly: {amount: 19000, currency: usd, interval: year}
      pro_monthly_eur: {amount: 1700, currency: eur, interval: month}
  enterprise:
    name: Enterprise
    display_order: 3
    features:
      ai_calls: {limit: 5000, reset: month}
      seats: {limit: null, reset: billing_period}
    prices:
      enterprise_monthly: {amount: 9900, currency: usd, interval: month}
      enterprise_monthly_eur: {amount: 8900, currency: eur, interval: month}
"""


def tiers() -> CatalogSpec:
    return load_catalog_yaml(TIERS_YAML)


async def tiered(
    client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway, key: str
) -> str:
    """The tiers catalog synced to the fake Stripe and user_1 known to Stripe (a checkout was
    opened); returns user_1's Stripe customer id."""
    await apply(pool, gateway, tiers())
    await client.put("/v1/customers/user_1", headers=bearer(key), json={"email": "a@example.com"})
    await client.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json={
            "customer_id": "user_1",
            "price": "basic_monthly",
            "success_url": "https://app.example.com/done",
            "cancel_url": "https://app.example.com/",
        },
    )
    stripe_id: str = await pool.fetchval(
        "SELECT stripe_customer_id FROM customers WHERE external_id = 'user_1'"
    )
    return stripe_id


async def price_id(pool: asyncpg.Pool, lookup_key: str) -> str:
    """The Stripe id of a catalog price."""
    return await stripe_price(pool, lookup_key)


async def mirrored(
    client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway, obj: dict[str, Any],
    event_type: str = "customer.subscription.updated",
) -> None:  # fmt: skip
    """Stripe tells us about `obj`; the worker processes the event."""
    event = stripe_event(event_type, obj)
    response = await post_event(client, event)
    assert response.status_code == 200, response.text
    await drain(pool, gateway)


async def customer(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    view: dict[str, Any] = (await client.get("/v1/customers/user_1", headers=bearer(key))).json()
    return view


async def allowance(client: httpx.AsyncClient, key: str, feature: str) -> dict[str, Any]:
    """user_1's entitlement to `feature`, as GET …/entitlements reports it."""
    found = await client.get("/v1/customers/user_1/entitlements", headers=bearer(key))
    assert found.status_code == 200, found.text
    entitlement: dict[str, Any] = next(
        e for e in found.json()["features"] if e["feature"] == feature
    )
    return entitlement
