"""When an event may skip the Stripe fetch: only when our last fetch began after we received it.

Stripe dates events in whole seconds, so an event's `created` cannot say whether its change came
before or after a fetch made in the same second; the time we received it can (the change was
made before Stripe sent the event).
"""

from __future__ import annotations

import asyncpg
import httpx

from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, seeded
from tests.routes.test_webhooks import (
    customer_with_stripe_account,
    drain,
    plan_of,
    post_event,
    stripe_price,
)
from tests.stripe_fakes import FakeStripe, stripe_event


async def test_an_event_dated_in_the_second_of_an_earlier_fetch_is_fetched(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """We fetch, then the customer cancels in Stripe; the event, dated the very second of our
    fetch (`created` is rounded down), still makes the worker fetch and mirror the change."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    await post_event(stripe_client, stripe_event("customer.subscription.created", subscription))
    await drain(pool, gateway)
    assert await plan_of(stripe_client, billing_key) == "pro"
    fetched_at = await pool.fetchval(
        "SELECT subscriptions_fetched_at FROM customers WHERE external_id = 'user_1'"
    )

    subscription.update(status="canceled", canceled_at=int(fetched_at.timestamp()))
    late = stripe_event(
        "customer.subscription.deleted", subscription, created=int(fetched_at.timestamp())
    )
    await post_event(stripe_client, late)
    fetches_before = len(fake_stripe.calls_to("GET", "/v1/subscriptions"))
    await drain(pool, gateway)

    assert len(fake_stripe.calls_to("GET", "/v1/subscriptions")) == fetches_before + 1
    assert await plan_of(stripe_client, billing_key) == "free"
    view = await stripe_client.get("/v1/customers/user_1/subscription", headers=bearer(billing_key))
    assert view.json()["status"] == "canceled"
