"""Billed overage reaches Stripe's meter exactly once: across replicas, a killed worker, and a
Stripe failure (the acceptance test of metered billing)."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import httpx
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from billing_service.services.meter_events import MeterEventDelivery
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import APP_HOST, WEBHOOK_SECRETS, issue_key
from tests.routes.test_checkout import bearer, checkout_body
from tests.routes.test_usage import track
from tests.routes.test_webhooks import post_event, stripe_price
from tests.stripe_fakes import stripe_event
from tests.stripe_server import Fault, StripeServer, sync_example_catalog
from tests.support import free_port, start_service
from tests.test_entitlement_cache import eventually, replica_env, shows

TRACKS = 650
INCLUDED = 500  # Pro's ai_calls limit in catalog.example.yaml
UNIT_AMOUNT = 2  # Pro's ai_calls overage_price, minor units
METERED_PRICE = "pro:ai_calls:overage:month"


async def _serve(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, httpx.AsyncClient]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = await start_service(env | {"BILLING_PORT": str(port)}, base)
    return process, httpx.AsyncClient(base_url=base, timeout=30)


async def _deliver_everything(pool: asyncpg.Pool, delivery: MeterEventDelivery) -> None:
    """Delivery rounds until nothing is pending, the clock moved past leases and backoffs."""
    for _ in range(50):
        await pool.execute(
            "UPDATE meter_events SET next_attempt_at = now() WHERE status = 'pending'"
        )
        await delivery.deliver_due()
        if not await pool.fetchval("SELECT count(*) FROM meter_events WHERE status = 'pending'"):
            return
    raise AssertionError("meter events still pending")


async def _subscribe_to_pro(
    pool: asyncpg.Pool,
    stripe_http: StripeServer,
    key: str,
    first: httpx.AsyncClient,
    second: httpx.AsyncClient,
) -> str:
    """user_1 subscribes to Pro monthly through A (checkout, then the webhook), with the plan's
    monthly metered price as a second item, as checkout asks Stripe for; both processes answer
    Pro's limit. Returns user_1's Stripe customer id."""
    put = await first.put(
        "/v1/customers/user_1", headers=bearer(key), json={"email": "a@example.com"}
    )
    assert put.status_code == 201, put.text
    session = await first.post(
        "/v1/checkout/sessions", headers=bearer(key), json=checkout_body("user_1")
    )
    assert session.status_code == 201, session.text
    stripe_id = await pool.fetchval(
        "SELECT stripe_customer_id FROM customers WHERE external_id = 'user_1'"
    )
    subscription = stripe_http.fake.add_subscription(
        stripe_id, await stripe_price(pool, "pro_monthly")
    )
    metered_price = await pool.fetchval(
        "SELECT stripe_price_id FROM metered_prices WHERE lookup_key = $1 AND active",
        METERED_PRICE,
    )
    stripe_http.fake.add_item(subscription, metered_price)
    event = stripe_event("customer.subscription.updated", subscription)
    assert (await post_event(first, event)).status_code == 200
    for client in (first, second):
        await eventually(shows(client, key, limit=INCLUDED), bound=10.0)
    return str(stripe_id)


async def _assert_billed_once(
    pool: asyncpg.Pool, stripe_http: StripeServer, stripe_id: str
) -> None:
    """Stripe's meter holds exactly the overage, one event per billable track, all sent."""
    accepted = stripe_http.fake.meter_events
    assert stripe_http.fake.metered_units("ai_calls", stripe_id) == TRACKS - INCLUDED
    assert Counter(e["identifier"] for e in accepted).most_common(1)[0][1] == 1
    rows = await pool.fetch("SELECT status, value, identifier FROM meter_events")
    assert len(rows) == TRACKS - INCLUDED
    assert {row["status"] for row in rows} == {"sent"}
    assert {e["identifier"] for e in accepted} == {row["identifier"] for row in rows}


async def _assert_estimated_and_previewed(
    key: str, reader: httpx.AsyncClient, billing: httpx.AsyncClient
) -> None:
    """Both the entitlements (on each process) and Stripe's upcoming invoice show the month's
    overage: 150 billable units at 2 cents, 300 minor units, on the metered line."""
    for client in (reader, billing):
        response = await client.get("/v1/customers/user_1/entitlements", headers=bearer(key))
        assert response.status_code == 200, response.text
        (ai_calls,) = [f for f in response.json()["features"] if f["feature"] == "ai_calls"]
        assert ai_calls["used"] == TRACKS
        assert ai_calls["overage_billing"] == {
            "billable_units": TRACKS - INCLUDED,
            "unit_amount": str(UNIT_AMOUNT),
            "currency": "usd",
            "estimated_amount": str((TRACKS - INCLUDED) * UNIT_AMOUNT),
        }
    response = await billing.get("/v1/customers/user_1/upcoming-invoice", headers=bearer(key))
    assert response.status_code == 200, response.text
    (usage_line,) = [line for line in response.json()["lines"] if line["metered"]]
    assert usage_line["price"] == METERED_PRICE
    assert usage_line["quantity"] == TRACKS - INCLUDED
    assert usage_line["amount"] == (TRACKS - INCLUDED) * UNIT_AMOUNT


async def test_a_month_of_pro_usage_bills_exactly_the_overage_once(
    cli_env: dict[str, str], pool: asyncpg.Pool, settings: Settings, stripe_http: StripeServer
) -> None:
    """A Pro customer tracks 650 AI calls concurrently on two serve processes: 150 are past the
    500 included and billed. Process A's worker starts delivering them to a slow Stripe and is
    killed mid-batch; Stripe then fails a whole round (500s); delivery carries on elsewhere.
    Stripe's meter ends up with exactly 150 units, each billable track once, and no track on
    the request path ever called Stripe. The entitlements then report 150 billable units
    estimated at 300 minor units, and the upcoming invoice's metered line has quantity 150."""
    stripe_settings = settings.model_copy(
        update={"stripe_secret_key": SecretStr("sk_test_fake"), "stripe_api_base": stripe_http.url}
    )
    await sync_example_catalog(pool, stripe_settings)
    key = await issue_key(pool, Scope.BILLING)
    writer = replica_env(cli_env) | {
        "BILLING_WORKER_ENABLED": "true",
        "BILLING_STRIPE_SECRET_KEY": "sk_test_fake",
        "BILLING_STRIPE_API_BASE": stripe_http.url,
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
        "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
        "BILLING_DATABASE_POOL_MAX": "10",
    }
    reader = replica_env(cli_env) | {"BILLING_DATABASE_POOL_MAX": "10"}
    process_a, first = await _serve(writer)
    process_b, second = await _serve(reader)
    process_c: asyncio.subprocess.Process | None = None
    third: httpx.AsyncClient | None = None
    try:
        stripe_id = await _subscribe_to_pro(pool, stripe_http, key, first, second)

        # Stripe answers meter events slowly, so A's worker is mid-batch when it dies.
        stripe_http.fault, stripe_http.fault_path = Fault.SLOW, "/v1/billing/meter_events"
        stripe_http.delay_seconds = 0.3
        calls_before = len(stripe_http.attempts)
        tracked = await asyncio.gather(
            *(track(client, key) for client in (first, second) for _ in range(TRACKS // 2))
        )
        assert [r.status_code for r in tracked] == [200] * TRACKS
        assert sum(r.json().get("overage", False) for r in tracked) == TRACKS - INCLUDED

        async def a_is_delivering() -> bool:
            return len(stripe_http.fake.meter_events) >= 5

        await eventually(a_is_delivering, bound=20.0)
        process_a.kill()
        await process_a.wait()
        leased = await pool.fetchval(
            "SELECT count(*) FROM meter_events WHERE status = 'pending' AND next_attempt_at > now()"
        )
        assert leased > 0  # a batch was out when the worker died

        gateway = StripeGateway.from_settings(stripe_settings)
        assert gateway is not None
        try:
            delivery = MeterEventDelivery(pool, gateway)
            stripe_http.fault, stripe_http.fault_path = Fault.SERVER_ERROR, "/v1/billing/"
            await pool.execute("UPDATE meter_events SET next_attempt_at = now()")
            assert await delivery.deliver_due() > 0
            failed = await pool.fetchval(
                "SELECT count(*) FROM meter_events WHERE status = 'pending' "
                "AND last_error IS NOT NULL"
            )
            assert failed > 0  # kept, to retry with backoff
            stripe_http.fault = Fault.NONE
            await _deliver_everything(pool, delivery)
        finally:
            await gateway.close()

        await _assert_billed_once(pool, stripe_http, stripe_id)
        # Tracks never called Stripe: every request to it during the tracks was a meter event.
        during = stripe_http.attempts[calls_before:]
        assert {a.path for a in during} <= {"/v1/billing/meter_events"}

        # A replica with Stripe (A is gone) answers the upcoming invoice; B has no Stripe key.
        process_c, third = await _serve(writer | {"BILLING_WORKER_ENABLED": "false"})
        await _assert_estimated_and_previewed(key, second, third)
    finally:
        for process in (process_a, process_b, process_c):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
        for client in (first, second, third):
            if client is not None:
                await client.aclose()
