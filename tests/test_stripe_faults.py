"""Stripe failing under a running service, over real sockets: slow answers, 500s, 429s and reset
connections end in a clear 503 within a known time, persist nothing, and never slow the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from billing_service.config import Settings
from tests.conftest import APP_HOST, app_client
from tests.routes.test_checkout import bearer, checkout_body
from tests.routes.test_usage import check
from tests.stripe_server import Fault, StripeServer, sync_example_catalog

TIMEOUT = 0.5
RETRIES = 1
# (retries + 1) attempts of at most TIMEOUT each, at most 0.5 s of backoff, and slack for a
# loaded CI machine.
BOUND_SECONDS = (RETRIES + 1) * TIMEOUT + 0.5 * RETRIES + 1.0
SLOW_SECONDS = 1.0


@pytest.fixture
def faulty_settings(settings: Settings, stripe_http: StripeServer) -> Settings:
    return settings.model_copy(
        update={
            "stripe_secret_key": SecretStr("sk_test_fake"),
            "stripe_api_base": stripe_http.url,
            "stripe_timeout_seconds": TIMEOUT,
            "stripe_max_network_retries": RETRIES,
            "allowed_redirect_hosts": [APP_HOST],
            "worker_enabled": False,
        }
    )


@pytest.fixture
async def service(
    faulty_settings: Settings, pool: asyncpg.Pool, billing_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app talking to the fake Stripe over HTTP, its catalog synced and 8 customers made."""
    await sync_example_catalog(pool, faulty_settings)
    async with app_client(faulty_settings) as client:
        for n in range(8):
            made = await client.put(
                f"/v1/customers/user_{n}",
                headers=bearer(billing_key),
                json={"email": f"user_{n}@example.com"},
            )
            assert made.status_code == 201
        yield client


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        (Fault.SLOW, RETRIES + 1),
        (Fault.SERVER_ERROR, RETRIES + 1),
        (Fault.RATE_LIMITED, 1),  # a 429 is not retried at once: the caller is told to wait
        (Fault.RESET, RETRIES + 1),
    ],
)
async def test_a_failing_stripe_gives_a_clear_503_in_bounded_time_and_saves_nothing(
    service: httpx.AsyncClient,
    stripe_http: StripeServer,
    pool: asyncpg.Pool,
    billing_key: str,
    fault: Fault,
    attempts: int,
) -> None:
    """Each attempt reuses one idempotency key; once Stripe is back, the same checkout succeeds
    and Stripe holds exactly one customer, even where a timed-out attempt was carried out."""
    stripe_http.fault, stripe_http.delay_seconds = fault, SLOW_SECONDS
    already = len(stripe_http.attempts)

    started = time.monotonic()
    failed = await service.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body("user_0")
    )
    elapsed = time.monotonic() - started

    assert failed.status_code == 503, failed.text
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.json()["type"] == "urn:billing-service:problem:stripe-unavailable"
    assert int(failed.headers["retry-after"]) > 0
    assert elapsed < BOUND_SECONDS
    made = stripe_http.attempts[already:]
    assert len(made) == attempts
    assert {(a.method, a.path) for a in made} == {("POST", "/v1/customers")}
    assert len({a.idempotency_key for a in made}) == 1
    assert made[0].idempotency_key is not None
    assert await pool.fetchval("SELECT count(*) FROM checkout_sessions") == 0
    assert await pool.fetchval(
        "SELECT stripe_customer_id FROM customers WHERE external_id = 'user_0'"
    ) is None  # fmt: skip

    stripe_http.fault = Fault.NONE
    await asyncio.sleep(SLOW_SECONDS)  # let late handling of timed-out attempts finish
    succeeded = await service.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body("user_0")
    )
    assert succeeded.status_code == 201, succeeded.text
    assert len(stripe_http.fake.customers) == 1
    assert len(stripe_http.fake.sessions) == 1
    assert await pool.fetchval("SELECT count(*) FROM checkout_sessions") == 1


async def test_a_slow_stripe_never_slows_the_hot_path(
    service: httpx.AsyncClient, stripe_http: StripeServer, billing_key: str
) -> None:
    """Eight success pages polling completed checkouts while Stripe's subscription list hangs
    (more than the pool's 5 connections; each poll holds one across that call) leave usage
    checks answering at once. Starved, a check would wait for a poll's 5 s Stripe call; the
    bound is far below that and far above a check's latency on a busy shared machine."""
    session_ids = []
    for n in range(8):
        opened = await service.post(
            "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body(f"user_{n}")
        )
        assert opened.status_code == 201, opened.text
        session_ids.append(opened.json()["id"])
        stripe_http.fake.complete_checkout(opened.json()["id"])
    stripe_http.fault, stripe_http.fault_path = Fault.SLOW, "/v1/subscriptions"
    stripe_http.delay_seconds = 5.0

    polls = [
        asyncio.create_task(
            service.get(f"/v1/checkout/sessions/{session_id}", headers=bearer(billing_key))
        )
        for session_id in session_ids
    ]
    await asyncio.sleep(0.2)  # every poll is now waiting on Stripe
    latencies = []
    for _ in range(20):
        started = time.monotonic()
        answered = await check(service, billing_key)
        latencies.append(time.monotonic() - started)
        assert answered.status_code == 200
    responses = await asyncio.gather(*polls)

    assert max(latencies) < 1.5, latencies
    assert {r.status_code for r in responses} == {503}
