"""The webhook ledger: signed receipt, exactly-once effects, ordering, retries, access policy."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from billing_service.services.stripe_events import EventProcessor
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import WEBHOOK_SECRETS
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.stripe_fakes import FakeStripe, stripe_error, stripe_event
from tests.support import stripe_signature_header
from tests.test_openapi import assert_matches_schema

WEBHOOK = "/v1/webhooks/stripe"


async def post_event(
    client: httpx.AsyncClient,
    event: dict[str, Any],
    *,
    secret: str = WEBHOOK_SECRETS[0],
    timestamp: int | None = None,
) -> httpx.Response:
    body = orjson.dumps(event)
    header = stripe_signature_header(body, secret, timestamp=timestamp)
    return await client.post(
        WEBHOOK,
        content=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


async def drain(pool: asyncpg.Pool, gateway: StripeGateway, *, max_attempts: int = 5) -> int:
    """Process every due event, as a worker would."""
    processor = EventProcessor(pool, gateway, max_attempts=max_attempts)
    total = 0
    while claimed := await processor.process_due():
        total += claimed
    return total


async def customer_with_stripe_account(
    client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway, key: str,
    customer_id: str = "user_1",
) -> str:  # fmt: skip
    """A customer who has been to checkout (so Stripe knows them); returns the Stripe id."""
    await client.put(
        f"/v1/customers/{customer_id}", headers=bearer(key), json={"email": "a@example.com"}
    )
    await client.post("/v1/checkout/sessions", headers=bearer(key), json=checkout_body(customer_id))
    stripe_id: str = await pool.fetchval(
        "SELECT stripe_customer_id FROM customers WHERE external_id = $1", customer_id
    )
    return stripe_id


async def plan_of(client: httpx.AsyncClient, key: str, customer_id: str = "user_1") -> str:
    view = (await client.get(f"/v1/customers/{customer_id}", headers=bearer(key))).json()
    plan: str = view["plan"]["key"]
    return plan


async def stripe_price(pool: asyncpg.Pool, lookup_key: str) -> str:
    price: str = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = $1 AND active", lookup_key
    )
    return price


async def paid_credit_pack_checkout(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, key: str, customer_id: str
) -> dict[str, Any]:
    """A completed one-time checkout in Stripe, and its checkout.session.completed event."""
    created = await client.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json=checkout_body(customer_id, price="ai_credits_1000"),
    )
    session = fake_stripe.complete_checkout(created.json()["id"])
    session.update(amount_total=1000, currency="usd")
    return stripe_event("checkout.session.completed", dict(session))


async def test_one_event_posted_many_times_is_stored_and_applied_once(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """5 sequential and 50 concurrent deliveries: all 2xx, one row, one order, one grant."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    event = await paid_credit_pack_checkout(stripe_client, fake_stripe, billing_key, "user_1")

    sequential = [await post_event(stripe_client, event) for _ in range(5)]
    await drain(pool, gateway)
    concurrent = await asyncio.gather(*(post_event(stripe_client, event) for _ in range(50)))
    await drain(pool, gateway)

    assert {r.status_code for r in sequential + list(concurrent)} == {200}
    assert [r.json()["duplicate"] for r in sequential] == [False, True, True, True, True]
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await pool.fetchval("SELECT sum(amount) FROM credit_grants") == 1000
    order = await stripe_client.get("/v1/customers/user_1/orders", headers=bearer(billing_key))
    [paid] = order.json()["data"]
    assert (paid["status"], paid["amount_total"], paid["currency"]) == ("paid", 1000, "usd")
    assert paid["line_items"] == [{"price": "ai_credits_1000", "quantity": 1}]


@pytest.mark.parametrize(
    "ordering", list(itertools.permutations(["created", "completed", "paid", "updated"]))
)
async def test_any_order_of_the_signup_events_ends_active_on_the_paid_plan(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    ordering: tuple[str, ...],
) -> None:
    """Events are signals: whatever order they come in, the result is Stripe's current state."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    created = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    session = fake_stripe.complete_checkout(created.json()["id"])
    subscription = fake_stripe.subscriptions[session["subscription"]]
    incomplete = subscription | {"status": "incomplete"}
    invoice = {"id": "in_1", "object": "invoice", "customer": session["customer"],
               "subscription": subscription["id"], "status": "paid"}  # fmt: skip
    events = {
        "created": stripe_event("customer.subscription.created", incomplete),
        "completed": stripe_event("checkout.session.completed", dict(session)),
        "paid": stripe_event("invoice.paid", invoice),
        "updated": stripe_event("customer.subscription.updated", dict(subscription)),
    }
    for name in ordering:
        assert (await post_event(stripe_client, events[name])).status_code == 200
        await drain(pool, gateway)

    rows = await pool.fetch("SELECT status FROM subscriptions")
    assert [row["status"] for row in rows] == ["active"]
    assert await plan_of(stripe_client, billing_key) == "pro"


async def test_a_stale_update_after_cancellation_leaves_it_canceled(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """updated(active) delivered after updated(canceled) cannot resurrect the subscription."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    active_snapshot = dict(subscription)
    subscription.update(status="canceled", ended_at=int(time.time()))

    await post_event(
        stripe_client, stripe_event("customer.subscription.updated", dict(subscription))
    )
    await drain(pool, gateway)
    await post_event(stripe_client, stripe_event("customer.subscription.updated", active_snapshot))
    await drain(pool, gateway)

    assert await pool.fetchval("SELECT status FROM subscriptions") == "canceled"
    assert await plan_of(stripe_client, billing_key) == "free"


def _flip_a_byte(body: bytes) -> bytes:
    return body.replace(b'"livemode":false', b'"livemode":false ', 1)


@pytest.mark.parametrize(
    "case", ["wrong secret", "flipped byte", "missing header", "missing t", "301 s old", "future"]
)
async def test_bad_signatures_are_400_and_store_nothing(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, case: str
) -> None:
    """Anything not provably signed by Stripe, now, is refused before it touches the ledger."""
    body = orjson.dumps(stripe_event("customer.updated", {"id": "cus_1", "object": "customer"}))
    now = int(time.time())
    header: str | None = stripe_signature_header(body, WEBHOOK_SECRETS[0])
    if case == "wrong secret":
        header = stripe_signature_header(body, "whsec_someone_else")
    elif case == "flipped byte":
        body = _flip_a_byte(body)
    elif case == "missing header":
        header = None
    elif case == "missing t":
        assert header is not None
        header = header.split(",", 1)[1]
    elif case == "301 s old":
        header = stripe_signature_header(body, WEBHOOK_SECRETS[0], timestamp=now - 301)
    elif case == "future":
        header = stripe_signature_header(body, WEBHOOK_SECRETS[0], timestamp=now + 3600)
    headers = {} if header is None else {"Stripe-Signature": header}
    response = await stripe_client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["type"] == "urn:billing-service:problem:invalid-webhook"
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_previous_signing_secret_still_verifies_during_rotation(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Every configured secret is tried, so rolling the secret in Stripe loses no event."""
    event = stripe_event("customer.updated", {"id": "cus_1", "object": "customer"})
    response = await post_event(stripe_client, event, secret=WEBHOOK_SECRETS[1])
    assert response.status_code == 200
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 1


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(stripe_event("customer.updated", {"id": "cus_1"}, livemode=True)),
        b"{not json",
        orjson.dumps({"id": "evt_1", "type": "customer.updated"}),
    ],
)
async def test_signed_but_unusable_events_are_400_and_store_nothing(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, body: bytes
) -> None:
    """A live-mode event in test mode, or a body that is no Stripe event, is refused."""
    header = stripe_signature_header(body, WEBHOOK_SECRETS[0])
    response = await stripe_client.post(WEBHOOK, content=body, headers={"Stripe-Signature": header})
    assert response.status_code == 400
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_unknown_event_types_are_stored_and_acknowledged_without_effect(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
) -> None:
    """A type we do not handle is kept in the ledger and marked processed, touching nothing."""
    event = stripe_event("radar.early_fraud_warning.created", {"id": "issfr_1"})
    assert (await post_event(stripe_client, event)).status_code == 200
    await drain(pool, gateway)
    assert await pool.fetchval("SELECT status FROM stripe_events") == "processed"
    assert fake_stripe.calls == []


async def test_a_failing_handler_leaves_the_event_pending_then_applies_it_once(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Stripe down while processing: retried later with backoff, and the effect lands once."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    await post_event(stripe_client, stripe_event("customer.subscription.created", subscription))
    fake_stripe.failures["/v1/subscriptions"] = stripe_error(400, "invalid_request_error")

    await drain(pool, gateway)
    row = await pool.fetchrow(
        "SELECT status, attempts, last_error, next_attempt_at > now() AS later FROM stripe_events"
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["later"]) == ("pending", 1, True)
    assert "StripeRequestFailed" in row["last_error"]
    assert await drain(pool, gateway) == 0  # not due yet
    assert await pool.fetchval("SELECT count(*) FROM subscriptions") == 0

    fake_stripe.failures.clear()
    await pool.execute("UPDATE stripe_events SET next_attempt_at = now()")  # the backoff passes
    await drain(pool, gateway)
    await drain(pool, gateway)
    row = await pool.fetchrow("SELECT status, attempts, last_error FROM stripe_events")
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == ("processed", 2, None)
    assert await pool.fetchval("SELECT count(*) FROM subscriptions") == 1


async def test_an_event_failing_every_attempt_is_dead_lettered_and_can_be_replayed(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    admin_key: str,
) -> None:
    """After the last attempt the event is `failed`; an admin replay processes it."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    event = stripe_event("customer.subscription.created", subscription)
    await post_event(stripe_client, event)
    fake_stripe.failures["/v1/subscriptions"] = stripe_error(400, "invalid_request_error")
    for _ in range(2):
        await drain(pool, gateway, max_attempts=2)
        await pool.execute("UPDATE stripe_events SET next_attempt_at = now()")
    assert await pool.fetchval("SELECT status FROM stripe_events") == "failed"

    failed = await stripe_client.get("/v1/events?status=failed", headers=bearer(admin_key))
    assert [e["id"] for e in failed.json()["data"]] == [event["id"]]
    assert_matches_schema(failed.json()["data"][0], "LedgerEvent")
    fake_stripe.failures.clear()
    replay = await stripe_client.post(f"/v1/events/{event['id']}/replay", headers=bearer(admin_key))
    assert replay.status_code == 202
    await drain(pool, gateway)
    assert await pool.fetchval("SELECT status FROM stripe_events") == "processed"
    assert await plan_of(stripe_client, billing_key) == "pro"
    missing = await stripe_client.post("/v1/events/evt_nope/replay", headers=bearer(admin_key))
    assert missing.status_code == 404
    denied = await stripe_client.get("/v1/events", headers=bearer(billing_key))
    assert denied.status_code == 403


async def test_twin_events_for_one_object_fetch_it_once(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Two events about the same subscription, received together, cost one Stripe fetch."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    for event_type in ("customer.subscription.updated", "customer.subscription.updated"):
        await post_event(stripe_client, stripe_event(event_type, subscription))

    await drain(pool, gateway)

    assert len(fake_stripe.calls_to("GET", "/v1/subscriptions")) == 1
    assert await pool.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'processed'") == 2


async def test_two_workers_on_one_backlog_process_every_event_exactly_once(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Two worker loops, each with its own connections, share 30 events: each is applied once."""
    customer_ids = [f"user_{n}" for n in range(30)]
    await seeded(stripe_client, pool, gateway, billing_key, *customer_ids)
    for customer_id in customer_ids:
        event = await paid_credit_pack_checkout(
            stripe_client, fake_stripe, billing_key, customer_id
        )
        await post_event(stripe_client, event)

    async def worker() -> int:
        processor = EventProcessor(pool, gateway, max_attempts=5)
        handled = 0
        while claimed := await processor.process_due(limit=3):
            handled += claimed
            await asyncio.sleep(0)
        return handled

    handled = await asyncio.gather(worker(), worker())

    assert sum(handled) == 30
    assert all(count > 0 for count in handled)
    rows = await pool.fetch("SELECT status, attempts FROM stripe_events")
    assert {(row["status"], row["attempts"]) for row in rows} == {("processed", 1)}
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'paid'") == 30
    assert await pool.fetchval("SELECT count(*) FROM credit_grants") == 30


STATUS_MATRIX = [
    ("active", {}, "pro"),
    ("trialing", {}, "pro"),
    ("past_due", {}, "pro"),
    ("past_due", {"past_due_days": 8}, "free"),
    ("incomplete", {}, "free"),
    ("incomplete_expired", {}, "free"),
    ("unpaid", {}, "free"),
    ("paused", {}, "free"),
    ("canceled", {}, "free"),
    ("active", {"cancel_at_period_end": True}, "pro"),
]


@pytest.mark.parametrize(("status", "details", "plan"), STATUS_MATRIX)
async def test_access_policy_by_subscription_status(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    status: str,
    details: dict[str, Any],
    plan: str,
) -> None:
    """What each Stripe status entitles the customer to, right after the event is processed."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        customer, await stripe_price(pool, "pro_monthly"), status=status
    )
    subscription["cancel_at_period_end"] = details.get("cancel_at_period_end", False)
    await post_event(stripe_client, stripe_event("customer.subscription.updated", subscription))
    await drain(pool, gateway)
    if "past_due_days" in details:  # the grace period (7 days by default) has run out
        await pool.execute(
            "UPDATE subscriptions SET past_due_since = now() - make_interval(days => $1)",
            details["past_due_days"],
        )
    assert await plan_of(stripe_client, billing_key) == plan


async def test_refunds_and_failed_async_payments_update_the_order(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """charge.refunded marks the order refunded; async_payment_failed marks it failed."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1", "user_2")
    paid = await paid_credit_pack_checkout(stripe_client, fake_stripe, billing_key, "user_1")
    await post_event(stripe_client, paid)
    await drain(pool, gateway)
    charge = fake_stripe.add_charge(paid["data"]["object"]["payment_intent"], refunded=True)
    await post_event(stripe_client, stripe_event("charge.refunded", charge))
    await drain(pool, gateway)
    await post_event(stripe_client, paid | {"id": "evt_redelivered_paid"})  # a late twin
    await drain(pool, gateway)

    failing = await paid_credit_pack_checkout(stripe_client, fake_stripe, billing_key, "user_2")
    failing_session = fake_stripe.sessions[failing["data"]["object"]["id"]]
    failing_session["payment_status"] = "unpaid"
    await post_event(stripe_client, failing)
    await post_event(
        stripe_client, stripe_event("checkout.session.async_payment_failed", dict(failing_session))
    )
    await drain(pool, gateway)

    statuses = await pool.fetch(
        "SELECT c.external_id, o.status FROM orders o JOIN customers c ON c.id = o.customer_id "
        "ORDER BY c.external_id"
    )
    assert [(r["external_id"], r["status"]) for r in statuses] == [
        ("user_1", "refunded"),
        ("user_2", "failed"),
    ]
    assert await pool.fetchval("SELECT count(*) FROM credit_grants") == 1


async def test_customer_and_catalog_events(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """customer.updated mirrors the email; customer.deleted forgets the account; a product
    renamed in the dashboard is recorded as catalog drift."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    fake_stripe.customers[customer]["email"] = "changed@example.com"
    await post_event(
        stripe_client, stripe_event("customer.updated", fake_stripe.customers[customer])
    )
    product_id = await pool.fetchval("SELECT stripe_product_id FROM plans WHERE key = 'pro'")
    fake_stripe.products[product_id]["name"] = "Pro (renamed)"
    await post_event(
        stripe_client, stripe_event("product.updated", fake_stripe.products[product_id])
    )
    await drain(pool, gateway)

    view = (await stripe_client.get("/v1/customers/user_1", headers=bearer(billing_key))).json()
    assert view["email"] == "changed@example.com"
    assert await pool.fetchval("SELECT description FROM catalog_drift") == (
        "product of plan 'pro': name is 'Pro (renamed)' in Stripe, 'Pro' in the catalog"
    )

    await post_event(
        stripe_client, stripe_event("customer.deleted", fake_stripe.delete_customer(customer))
    )
    await drain(pool, gateway)
    assert await pool.fetchval("SELECT stripe_customer_id FROM customers") is None
