"""The Python client's cache invalidation against real deliveries: a `serve` with its worker on
sends a signed webhook to an app whose handler is `EntitlementCache.handle_webhook`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn
from billing_client import (
    AsyncBillingClient,
    EntitlementCache,
    Entitlements,
    InvalidWebhook,
    verify_webhook,
)
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.clients.conftest import Keys
from tests.live_service import LiveService, service_env
from tests.support import free_port, start_service


@dataclass
class App:
    """A calling app: its entitlement cache, its webhook secret, and what its endpoint got."""

    cache: EntitlementCache
    url: str = ""
    secret: str = ""
    events: list[str] = field(default_factory=list)
    refused: int = 0
    delivered: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def running_app(cache: EntitlementCache) -> AsyncIterator[App]:
    """The app's webhook endpoint on 127.0.0.1, handled as docs/clients.md shows."""
    port = free_port()
    app = App(cache=cache, url=f"http://127.0.0.1:{port}/hooks/billing")

    async def hooks(request: Request) -> Response:
        try:
            event = app.cache.handle_webhook(app.secret, await request.body(), request.headers)
        except InvalidWebhook:
            app.refused += 1
            return Response(status_code=400)
        app.events.append(event.type)
        app.delivered.set()
        return Response(status_code=204)

    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/hooks/billing", hooks, methods=["POST"])]),
            host="127.0.0.1",
            port=port,
            log_config=None,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield app
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def delivering_service(live_service: LiveService, database_url: str) -> AsyncIterator[str]:
    """A second `serve` on the same database with its worker on, allowed to deliver to
    loopback; stopped before the next test empties the tables."""
    port = free_port()
    env = service_env(
        database_url, port, live_service.stripe,
        BILLING_WORKER_ENABLED="true", BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE="127.0.0.1",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    service = await start_service(env, base)
    try:
        yield base
    finally:
        service.terminate()
        await service.wait()


async def test_a_delivery_verified_by_the_cache_evicts_its_customer(
    delivering_service: str, keys: Keys
) -> None:
    """Another process uses up the allowance; the cached entitlements stay stale until the
    service's usage.limit_reached webhook arrives, verifies, and evicts the customer."""
    cache = EntitlementCache(ttl_seconds=3600)
    async with (
        running_app(cache) as app,
        AsyncBillingClient(delivering_service, keys.usage, cache=cache) as billing,
        AsyncBillingClient(delivering_service, keys.usage) as elsewhere,
        httpx.AsyncClient(base_url=delivering_service) as admin,
    ):
        registered = await admin.post(
            "/v1/webhook-endpoints", headers={"Authorization": f"Bearer {keys.admin}"},
            json={"url": app.url, "event_types": ["usage.limit_reached"]},
        )  # fmt: skip
        assert registered.status_code == 201, registered.text
        app.secret = registered.json()["secret"]

        before = await billing.entitlements("user_1")
        assert before.get("ai_calls").used == 0  # type: ignore[union-attr]
        await elsewhere.track("user_1", "ai_calls", 5)
        assert (await billing.entitlements("user_1")) is before  # stale, from the cache

        await asyncio.wait_for(app.delivered.wait(), timeout=30)
        assert app.events == ["usage.limit_reached"]
        assert app.refused == 0
        assert cache.get("user_1") is None
        after = await billing.entitlements("user_1")
        assert (after.get("ai_calls").used, after.allows("ai_calls")) == (5, False)  # type: ignore[union-attr]


async def test_a_forged_stale_or_foreign_delivery_is_refused_and_evicts_nothing() -> None:
    """A body changed after signing, a signature under another secret, or a delivery older than
    the tolerance raise `InvalidWebhook`, and the cached customer stays cached."""
    secret = "whsec_" + "c2VjcmV0LWtleS1vZi10aGUtZW5kcG9pbnQ="
    body = json.dumps(
        {"type": "usage.limit_reached", "timestamp": "…", "data": {"customer_id": "u"}}
    )
    headers = signed(secret, "msg_1", int(time.time()), body.encode())
    assert verify_webhook(secret, body, headers).customer_id == "u"

    cache = EntitlementCache()
    cached = Entitlements(customer_id="u", plan="free", subscription_status=None, features=())
    cache.put(cached)
    for secret_used, body_sent, sent_headers in (
        (secret, body.replace('"u"', '"v"'), headers),
        ("whsec_" + "b3RoZXItc2VjcmV0", body, headers),
        (secret, body, signed(secret, "msg_1", int(time.time()) - 301, body.encode())),
        (secret, body, {k: v for k, v in headers.items() if k != "webhook-signature"}),
    ):
        with pytest.raises(InvalidWebhook):
            cache.handle_webhook(secret_used, body_sent, sent_headers)
    assert cache.get("u") is cached


def signed(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers as the reference Standard Webhooks library signs them."""
    at = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(message_id, at, body.decode()),
    }
