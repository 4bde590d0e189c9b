"""A customer deleted in Stripe: Stripe cancels their subscriptions, so the mirror ends them and
the plan stops, whatever order the events come in; the next checkout makes a new Stripe customer
(never the deleted one, which Stripe would replay for 24 hours under the old key)."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.routes.test_customers import subscribed
from tests.routes.test_webhooks import drain, plan_of, post_event
from tests.stripe_fakes import FakeStripe, stripe_event


async def deleted_in_stripe(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    key: str,
    order: list[str],
) -> str:
    """user_1 subscribes to Pro, then is deleted in Stripe; the deletion's events arrive in
    `order`. Returns the deleted Stripe customer's id."""
    await seeded(client, pool, gateway, key, "user_1")
    await subscribed(client, fake_stripe, key, "pro_monthly")
    assert await plan_of(client, key) == "pro"
    [subscription] = fake_stripe.subscriptions.values()
    stripe_customer: str = subscription["customer"]
    stub = fake_stripe.delete_customer(stripe_customer)
    assert subscription["status"] == "canceled"
    events = {
        "customer.deleted": stripe_event("customer.deleted", stub),
        "customer.subscription.deleted": stripe_event(
            "customer.subscription.deleted", dict(subscription)
        ),
    }
    for event_type in order:
        assert (await post_event(client, events[event_type])).status_code == 200
        await drain(pool, gateway)
    return stripe_customer


ORDERS = {
    "customer first": ["customer.deleted", "customer.subscription.deleted"],
    "subscription first": ["customer.subscription.deleted", "customer.deleted"],
    "customer only": ["customer.deleted"],
}


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
async def test_a_customer_deleted_in_stripe_loses_the_plan_and_can_check_out_again(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    order: list[str],
) -> None:
    """The mirrored subscription ends, the plan falls to free, apps hear of it once, and a new
    checkout creates a new Stripe customer under a new key."""
    deleted = await deleted_in_stripe(stripe_client, pool, gateway, fake_stripe, billing_key, order)

    assert await plan_of(stripe_client, billing_key) == "free"
    row = await pool.fetchrow("SELECT status, ended_at FROM subscriptions")
    assert row is not None
    assert (row["status"], row["ended_at"] is not None) == ("canceled", True)
    assert await pool.fetchval("SELECT stripe_customer_id FROM customers") is None
    entitlements = await pool.fetch(
        "SELECT payload FROM outbox_events WHERE type = 'customer.entitlements_updated' "
        "ORDER BY created_at"
    )
    assert [e["payload"]["paid_plan"] for e in entitlements] == ["pro", None]
    assert (
        await pool.fetchval("SELECT count(*) FROM stripe_events WHERE status <> 'processed'") == 0
    )

    again = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert again.status_code == 201, again.text
    renewed = await pool.fetchval("SELECT stripe_customer_id FROM customers")
    assert renewed not in (None, deleted)
    assert not fake_stripe.customers[renewed].get("deleted")
    first, second = fake_stripe.calls_to("POST", "/v1/customers")[:2]
    assert (first.path, second.path) == ("/v1/customers", "/v1/customers")
    assert first.idempotency_key != second.idempotency_key


async def test_subscription_events_after_the_deletion_cannot_restore_the_plan(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A late, stale customer.subscription.updated (still active) after the deletion changes
    nothing: the deleted customer's subscriptions stay ended."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    [subscription] = fake_stripe.subscriptions.values()
    stale = dict(subscription)
    await post_event(
        stripe_client,
        stripe_event("customer.deleted", fake_stripe.delete_customer(subscription["customer"])),
    )
    await drain(pool, gateway)

    await post_event(stripe_client, stripe_event("customer.subscription.updated", stale))
    await drain(pool, gateway)

    assert await pool.fetchval("SELECT status FROM subscriptions") == "canceled"
    assert await plan_of(stripe_client, billing_key) == "free"


async def test_each_deletion_moves_the_stripe_customer_to_a_new_key(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Deleted twice within a day: three Stripe customers, each created under its own key, and
    the one stored is always the live one."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    created: list[str] = []
    for _ in range(3):
        opened = await stripe_client.post(
            "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
        )
        assert opened.status_code == 201, opened.text
        stripe_customer = await pool.fetchval("SELECT stripe_customer_id FROM customers")
        created.append(stripe_customer)
        if len(created) < 3:
            stub = fake_stripe.delete_customer(stripe_customer)
            await post_event(stripe_client, stripe_event("customer.deleted", stub))
            await drain(pool, gateway)

    assert len(set(created)) == 3
    keys = [c.idempotency_key for c in fake_stripe.calls_to("POST", "/v1/customers")]
    assert len(keys) == len(set(keys)) == 3
    assert await pool.fetchval("SELECT stripe_customer_generation FROM customers") == 2


async def test_the_fake_replays_an_idempotency_key_for_24_hours_like_stripe(
    gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Within 24 h the same key answers the first customer again (even a deleted one); after
    it, Stripe has pruned the key and creates a new customer."""

    async def create() -> str:
        return await gateway.create_customer(
            email=None, name=None, metadata={}, idempotency_key="customer:x:create"
        )

    first = await create()
    fake_stripe.delete_customer(first)
    fake_stripe.pass_time(23 * 3600)
    assert await create() == first
    fake_stripe.pass_time(2 * 3600)
    assert await create() != first
