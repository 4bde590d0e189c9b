"""Outgoing webhooks: written with the change, signed (Standard Webhooks), retried, logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from standardwebhooks import Webhook

from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer, seeded
from tests.routes.test_usage import catalog_with, track
from tests.routes.test_webhooks import (
    customer_with_stripe_account,
    drain,
    paid_credit_pack_checkout,
    post_event,
    stripe_price,
)
from tests.routes.webhook_receivers import Receiver, deliver_all, running_receiver
from tests.stripe_fakes import FakeStripe, stripe_event


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers run on 127.0.0.1, so loopback is listed as allowed; the tests run the
    delivery worker themselves."""
    return settings.model_copy(
        update={"outgoing_webhook_allow_private": ["127.0.0.1"], "worker_enabled": False}
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as state:
        yield state


async def register(
    client: httpx.AsyncClient, admin_key: str, url: str, *event_types: str
) -> dict[str, Any]:
    response = await client.post(
        "/v1/webhook-endpoints",
        headers=bearer(admin_key),
        json={"url": url, "event_types": list(event_types)},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def verified(secret: str, headers: dict[str, str], body: bytes) -> Any:
    """Check the signature with the reference Standard Webhooks library."""
    return Webhook(secret).verify(body, headers)


async def test_crossing_a_soft_limit_under_load_is_announced_once(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    billing_key: str,
    receiver: Receiver,
) -> None:
    """100 concurrent tracks cross the soft limit: one usage.soft_limit_reached, signed."""
    await catalog_with(pool, limit=1000, soft_limit=50, reset="month")
    endpoint = await register(client, admin_key, receiver.url, "usage.soft_limit_reached")
    responses = await asyncio.gather(*(track(client, billing_key) for _ in range(100)))
    assert all(r.json()["allowed"] for r in responses)

    await deliver_all(pool)

    [(headers, body)] = receiver.of_type("usage.soft_limit_reached")
    message = verified(endpoint["secret"], headers, body)
    assert message["data"]["customer_id"] == "user_1"
    assert message["data"]["feature"] == "ai_calls"
    assert message["data"]["soft_limit"] == 50
    assert headers["webhook-id"].startswith("msg_")


async def test_a_failing_receiver_gets_the_same_webhook_id_on_the_third_try(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    billing_key: str,
    receiver: Receiver,
) -> None:
    """Two 500s, then success: three attempts, one webhook-id, a delivery log that shows it."""
    await catalog_with(pool, limit=1, reset="month")
    endpoint = await register(client, admin_key, receiver.url, "usage.limit_reached")
    receiver.fail_next = 2
    await track(client, billing_key)

    for _ in range(3):
        await deliver_all(pool)
        await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = now()")

    assert len(receiver.received) == 3
    ids = {headers["webhook-id"] for headers, _body in receiver.received}
    assert len(ids) == 1
    for headers, body in receiver.received:
        verified(endpoint["secret"], headers, body)
    log = await client.get(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=bearer(admin_key)
    )
    [delivery] = log.json()["data"]
    assert (delivery["status"], delivery["attempts"], delivery["webhook_id"]) == (
        "delivered", 3, ids.pop(),
    )  # fmt: skip


async def test_redelivery_and_a_disabled_endpoint(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    billing_key: str,
    receiver: Receiver,
) -> None:
    """An admin can resend a delivery (same webhook-id); an endpoint that keeps failing is
    disabled, and enabling it again starts its failure count over."""
    await catalog_with(pool, limit=1, reset="month")
    endpoint = await register(client, admin_key, receiver.url, "usage.limit_reached")
    await track(client, billing_key)
    await deliver_all(pool)
    [delivery] = (
        await client.get(
            f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=bearer(admin_key)
        )
    ).json()["data"]
    again = await client.post(
        f"/v1/webhook-deliveries/{delivery['id']}/redeliver", headers=bearer(admin_key)
    )
    assert again.status_code == 202
    await deliver_all(pool)
    assert [h["webhook-id"] for h, _ in receiver.received] == [delivery["webhook_id"]] * 2

    await pool.execute("UPDATE webhook_endpoints SET consecutive_failures = 29")
    receiver.fail_next = 1
    await client.post(
        f"/v1/webhook-deliveries/{delivery['id']}/redeliver", headers=bearer(admin_key)
    )
    await deliver_all(pool)
    listed = (await client.get("/v1/webhook-endpoints", headers=bearer(admin_key))).json()
    assert listed["data"][0]["enabled"] is False
    enabled = await client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", headers=bearer(admin_key),
        json={"enabled": True},
    )  # fmt: skip
    assert (enabled.json()["enabled"], enabled.json()["consecutive_failures"]) == (True, 0)


async def test_endpoints_are_admin_only_and_event_types_checked(
    client: httpx.AsyncClient, admin_key: str, billing_key: str
) -> None:
    """Registering needs admin; unknown event types are refused; the secret is shown once."""
    denied = await client.post(
        "/v1/webhook-endpoints", headers=bearer(billing_key),
        json={"url": "https://app.example.com/hooks", "event_types": ["order.completed"]},
    )  # fmt: skip
    assert denied.status_code == 403
    unknown = await client.post(
        "/v1/webhook-endpoints", headers=bearer(admin_key),
        json={"url": "https://app.example.com/hooks", "event_types": ["order.exploded"]},
    )  # fmt: skip
    assert unknown.status_code == 422
    created = await register(client, admin_key, "https://app.example.com/hooks", "order.completed")
    assert created["secret"].startswith("whsec_")
    listed = (await client.get("/v1/webhook-endpoints", headers=bearer(admin_key))).json()
    assert "secret" not in listed["data"][0]


async def test_billing_changes_are_announced_once_each(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    stripe_mock: respx.MockRouter,
    admin_key: str,
    billing_key: str,
    receiver: Receiver,
) -> None:
    """A paid credit pack delivered three times is one order.completed; a new subscription is
    one subscription.updated and one customer.entitlements_updated."""
    stripe_mock.route(host="127.0.0.1").pass_through()  # the receiver is real
    endpoint = await register(
        stripe_client, admin_key, receiver.url,
        "order.completed", "subscription.updated", "customer.entitlements_updated",
    )  # fmt: skip
    await seeded(stripe_client, pool, gateway, billing_key, "user_1", "user_2")
    paid = await paid_credit_pack_checkout(stripe_client, fake_stripe, billing_key, "user_1")
    for _ in range(3):
        await post_event(stripe_client, paid)
        await drain(pool, gateway)
    customer = await customer_with_stripe_account(
        stripe_client, pool, gateway, billing_key, "user_2"
    )
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    await post_event(stripe_client, stripe_event("customer.subscription.created", subscription))
    await drain(pool, gateway)

    await deliver_all(pool)

    [(headers, body)] = receiver.of_type("order.completed")
    order = verified(endpoint["secret"], headers, body)["data"]
    assert (order["customer_id"], order["amount_total"]) == ("user_1", 1000)
    [(_, updated)] = receiver.of_type("subscription.updated")
    assert b'"status":"active"' in updated
    [(_, entitlements)] = receiver.of_type("customer.entitlements_updated")
    assert b'"paid_plan":"pro"' in entitlements
