"""The console's test helpers: the real app with the console on, a browser-like client that
keeps cookies (over https, so `Secure` cookies are sent), sign-in, and seeded billing data."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.db import outbox, stripe_events
from billing_service.services import outgoing_webhooks
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply, example

CONSOLE_BASE = "https://billing.test"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')

CUSTOMER = "ada_lovelace"
CUSTOMER_EMAIL = "ada@console.example"
STRIPE_CUSTOMER = "cus_console_ada"
FAILED_EVENT = "evt_console_failed"
CLIENT_SECRET = "pi_console_secret_k9Xq7Zt"
TRACKED = 7


@asynccontextmanager
async def console_client(
    settings: Settings, *, clock: Callable[[], datetime] | None = None, **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with the console on, spoken to over ASGI as `https://billing.test`."""
    ready = settings.model_copy(update={"console_enabled": True, **overrides})
    app = create_app(ready) if clock is None else create_app(ready, clock=clock)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=CONSOLE_BASE) as client:
            yield client


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found[1]


async def signed_in(client: httpx.AsyncClient, key: str) -> None:
    """Sign the client in; it then carries the session cookie."""
    response = await sign_in(client, key)
    assert response.status_code == 303, response.text


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Open the sign-in page and submit the key, as a browser would."""
    page = await client.get("/console/sign-in")
    assert page.status_code == 200, page.text
    return await client.post("/console/sign-in", data={"csrf": csrf_of(page.text), "key": key})


@dataclass(frozen=True)
class Seeded:
    """What `seed` made: keys and secrets the pages must never show."""

    admin_key: str
    usage_key: str
    endpoint_secret: str
    endpoint_id: str


async def seed(client: httpx.AsyncClient, pool: asyncpg.Pool) -> Seeded:
    """The example catalog; a Pro customer with usage, an order and a credit grant; a failed
    Stripe event about them (with a client secret in its payload); a webhook endpoint with a
    failed delivery of a notification about them."""
    await apply(pool, None, example())
    admin_key = await issue_key(pool, Scope.ADMIN)
    usage_key = await issue_key(pool, Scope.USAGE)
    now = datetime.now(UTC)
    put = await client.put(
        f"/v1/customers/{CUSTOMER}", headers=bearer(admin_key),
        json={"email": CUSTOMER_EMAIL, "name": "Ada Lovelace"},
    )  # fmt: skip
    assert put.status_code == 201, put.text
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE customers SET stripe_customer_id = $2 WHERE external_id = $1",
            CUSTOMER, STRIPE_CUSTOMER,
        )  # fmt: skip
        await conn.execute(
            """
            INSERT INTO subscriptions (customer_id, stripe_subscription_id, status,
                stripe_price_id, price_id, quantity, stripe_created_at, current_period_start,
                current_period_end)
            SELECT c.id, 'sub_console_ada', 'active', 'price_pro_monthly', p.id, 1, $2, $3, $4
            FROM customers c, prices p WHERE c.external_id = $1 AND p.lookup_key = 'pro_monthly'
            """,
            CUSTOMER, now - timedelta(days=40), now - timedelta(days=10), now + timedelta(days=20),
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO orders (customer_id, stripe_checkout_session_id, status, currency, "
            "amount_total) SELECT id, 'cs_console_1', 'paid', 'usd', 1000 FROM customers "
            "WHERE external_id = $1",
            CUSTOMER,
        )
        await stripe_events.insert_event(
            conn,
            stripe_event_id=FAILED_EVENT,
            type="payment_intent.created",
            livemode=False,
            api_version=None,
            stripe_created_at=now,
            object_id="pi_console",
            payload={
                "id": FAILED_EVENT,
                "object": "event",
                "type": "payment_intent.created",
                "data": {
                    "object": {
                        "id": "pi_console",
                        "object": "payment_intent",
                        "customer": STRIPE_CUSTOMER,
                        "client_secret": CLIENT_SECRET,
                        "description": f"paid with {CLIENT_SECRET}",
                        "amount": 1000,
                    }
                },
            },
        )
        await conn.execute(
            "UPDATE stripe_events SET status = 'failed', attempts = 10, "
            "last_error = 'handler raised: boom' WHERE stripe_event_id = $1",
            FAILED_EVENT,
        )
        secret = outgoing_webhooks.new_secret()
        endpoint = await outbox.insert_endpoint(
            conn, url="https://hooks.console.example/billing",
            event_types=["subscription.updated"], secret=secret,
        )  # fmt: skip
        await outbox.emit(conn, "subscription.updated", {"customer_id": CUSTOMER})
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'failed', attempts = 3, "
            "last_status_code = 500, last_error = 'HTTP 500'"
        )
    tracked = await client.post(
        "/v1/usage/track", headers=bearer(usage_key),
        json={"customer_id": CUSTOMER, "feature": "ai_calls", "amount": TRACKED,
              "idempotency_key": "console-seed"},
    )  # fmt: skip
    assert tracked.status_code == 200, tracked.text
    granted = await client.post(
        f"/v1/customers/{CUSTOMER}/credits", headers=bearer(admin_key),
        json={"feature": "ai_calls", "amount": 50, "reason": "welcome gift"},
    )  # fmt: skip
    assert granted.status_code == 201, granted.text
    return Seeded(admin_key, usage_key, secret, str(endpoint.id))


async def visit_every_page(client: httpx.AsyncClient, seeded: Seeded) -> dict[str, str]:
    """Every page of the console (signed in), and the sign-in page, by path: their sources."""
    paths = [
        "/console",
        "/console/customers",
        f"/console/customers?q={CUSTOMER[:3]}",
        f"/console/customers/{CUSTOMER}",
        "/console/events",
        "/console/events?status=failed",
        f"/console/events/{FAILED_EVENT}",
        "/console/catalog",
        "/console/deliveries",
        f"/console/deliveries?endpoint={seeded.endpoint_id}",
        "/console/static/console.js",
    ]
    sources = {}
    for path in paths:
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)
        sources[path] = response.text
    async with httpx.AsyncClient(transport=client._transport, base_url=CONSOLE_BASE) as fresh:
        sources["/console/sign-in"] = (await fresh.get("/console/sign-in")).text
    return sources
