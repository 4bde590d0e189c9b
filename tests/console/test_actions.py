"""The console's actions do what the API's routes do: replay one event or every failed one,
redeliver a webhook, grant credits (audited, under the signed-in key's name), re-sync a
customer from Stripe and make a portal link; bad input changes nothing."""

from __future__ import annotations

import asyncpg
import httpx

from billing_service.config import Settings
from tests.console.support import (
    CUSTOMER,
    FAILED_EVENT,
    STRIPE_CUSTOMER,
    console_client,
    csrf_of,
    seed,
    signed_in,
)
from tests.stripe_fakes import FakeStripe, stripe_object


async def csrf(client: httpx.AsyncClient) -> str:
    return csrf_of((await client.get("/console/catalog")).text)


async def event_state(pool: asyncpg.Pool) -> tuple[str, int]:
    row = await pool.fetchrow(
        "SELECT status, attempts FROM stripe_events WHERE stripe_event_id = $1", FAILED_EVENT
    )
    assert row is not None
    return row["status"], row["attempts"]


async def test_replaying_one_event_makes_it_pending_again(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Replay from the event's page: the failed event is pending with its attempts reset, and
    the browser is sent back to the event."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        token = csrf_of((await client.get(f"/console/events/{FAILED_EVENT}")).text)
        replayed = await client.post(f"/console/events/{FAILED_EVENT}/replay", data={"csrf": token})
        unknown = await client.post("/console/events/evt_nope/replay", data={"csrf": token})
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"/console/events/{FAILED_EVENT}"
    assert await event_state(pool) == ("pending", 0)
    assert unknown.status_code == 404


async def test_replaying_all_failed_events_requeues_each(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Every failed event is pending again and the page says how many."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        done = await client.post("/console/events/replay-failed", data={"csrf": await csrf(client)})
    assert done.status_code == 200
    assert "1 failed event(s) are pending again" in done.text
    assert await event_state(pool) == ("pending", 0)


async def test_redelivering_a_webhook_makes_the_delivery_pending(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The failed delivery is queued again; an unknown or malformed id is a 404."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        token = await csrf(client)
        delivery = await pool.fetchval("SELECT id FROM webhook_deliveries")
        done = await client.post(f"/console/deliveries/{delivery}/redeliver", data={"csrf": token})
        bad = await client.post("/console/deliveries/not-a-uuid/redeliver", data={"csrf": token})
    assert done.status_code == 200
    assert await pool.fetchval("SELECT status FROM webhook_deliveries") == "pending"
    assert bad.status_code == 404


async def test_granting_credits_adds_them_under_the_signed_in_keys_name(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The grant shows on the customer's page (credits and audit) with the reason and the
    key's name; an invalid amount is a 422 page and grants nothing."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        page = await client.get(f"/console/customers/{CUSTOMER}")
        form = {"csrf": csrf_of(page.text), "feature": "ai_calls", "reason": "support ticket 12"}
        bad = await client.post(
            f"/console/customers/{CUSTOMER}/credits", data=form | {"amount": "-3"}
        )
        done = await client.post(
            f"/console/customers/{CUSTOMER}/credits", data=form | {"amount": "25"}
        )
        after = await client.get(f"/console/customers/{CUSTOMER}")
    assert bad.status_code == 422
    assert "amount" in bad.text
    assert done.status_code == 303
    assert "support ticket 12" in after.text
    audit = await pool.fetch(
        "SELECT details ->> 'amount' AS amount, reason, actor_name FROM grant_audit "
        "ORDER BY created_at"
    )
    assert [(row["amount"], row["reason"], row["actor_name"]) for row in audit] == [
        ("50", "welcome gift", "test"),
        ("25", "support ticket 12", "test"),
    ]


async def test_resync_needs_stripe_and_mirrors_what_stripe_has(
    settings: Settings,
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    fake_stripe: FakeStripe,
) -> None:
    """Without Stripe the action says so (503); with it, a subscription Stripe holds and the
    mirror lacks is mirrored."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        refused = await client.post(
            f"/console/customers/{CUSTOMER}/sync", data={"csrf": await csrf(client)}
        )
    assert refused.status_code == 503
    assert "Stripe" in refused.text
    fake_stripe.customers[STRIPE_CUSTOMER] = stripe_object("customer", id=STRIPE_CUSTOMER)
    price = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_yearly'"
    )
    stripe_sub = fake_stripe.add_subscription(STRIPE_CUSTOMER, price or "price_missing")
    async with console_client(stripe_settings) as client:
        await signed_in(client, seeded.admin_key)
        synced = await client.post(
            f"/console/customers/{CUSTOMER}/sync", data={"csrf": await csrf(client)}
        )
    assert synced.status_code == 303, synced.text
    stored = await pool.fetchval(
        "SELECT count(*) FROM subscriptions WHERE stripe_subscription_id = $1", stripe_sub["id"]
    )
    assert stored == 1


async def test_a_portal_link_is_made_for_a_customer_stripe_knows(
    stripe_settings: Settings, pool: asyncpg.Pool, fake_stripe: FakeStripe
) -> None:
    """The link is shown to copy; a return URL on a host not allowed is a 422 page."""
    fake_stripe.customers[STRIPE_CUSTOMER] = stripe_object("customer", id=STRIPE_CUSTOMER)
    async with console_client(stripe_settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        page = await client.get(f"/console/customers/{CUSTOMER}")
        token = csrf_of(page.text)
        assert 'value="https://app.example.com/"' in page.text
        made = await client.post(
            f"/console/customers/{CUSTOMER}/portal",
            data={"csrf": token, "return_url": "https://app.example.com/account"},
        )
        elsewhere = await client.post(
            f"/console/customers/{CUSTOMER}/portal",
            data={"csrf": token, "return_url": "https://evil.example/"},
        )
    assert made.status_code == 200, made.text
    assert 'value="https://billing.stripe.com/p/session/' in made.text
    assert elsewhere.status_code == 422
