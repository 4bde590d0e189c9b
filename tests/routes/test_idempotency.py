"""Idempotency-Key while the first request is still running, against the fake Stripe on a real
socket (which, like Stripe, refuses a second request on a key still in use): retries wait for
the first response, never disturb the first request's reservation, and a dead owner's
reservation is taken over once its lease ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.services.idempotency import Patience
from tests.conftest import APP_HOST, app_client
from tests.routes.test_checkout import bearer, checkout_body
from tests.stripe_server import Fault, StripeServer, sync_example_catalog
from tests.support import free_port, start_service

SESSIONS = "/v1/checkout/sessions"
STRIPE_SECONDS = 3.0  # how long Stripe takes to open a session in these tests


@pytest.fixture
def slow_stripe_settings(settings: Settings, stripe_http: StripeServer) -> Settings:
    """The default Stripe timeout and retries, against the fake Stripe server."""
    return settings.model_copy(
        update={
            "stripe_secret_key": SecretStr("sk_test_fake"),
            "stripe_api_base": stripe_http.url,
            "allowed_redirect_hosts": [APP_HOST],
            "worker_enabled": False,
        }
    )


@pytest.fixture
async def service(
    slow_stripe_settings: Settings, pool: asyncpg.Pool, stripe_http: StripeServer, billing_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its catalog synced, user_1 created, and Stripe slow to open sessions."""
    await sync_example_catalog(pool, slow_stripe_settings)
    async with app_client(slow_stripe_settings) as client:
        made = await client.put(
            "/v1/customers/user_1", headers=bearer(billing_key), json={"email": "a@example.com"}
        )
        assert made.status_code == 201
        stripe_http.fault, stripe_http.fault_path = Fault.SLOW, SESSIONS
        stripe_http.delay_seconds = STRIPE_SECONDS
        yield client


async def test_a_retry_while_the_first_request_runs_gets_the_same_session(
    service: httpx.AsyncClient, stripe_http: StripeServer, pool: asyncpg.Pool, billing_key: str
) -> None:
    """A retry 0.3 s into a 3 s Stripe call waits and gets the first request's 201, byte for
    byte; Stripe opens one session; a later different body is still 409 idempotency-key-reused
    (the retry left the first request's reservation alone)."""
    headers = bearer(billing_key) | {"Idempotency-Key": "order-1"}
    first = asyncio.create_task(service.post(SESSIONS, headers=headers, json=checkout_body()))
    await asyncio.sleep(0.3)
    retries = await asyncio.gather(
        *(service.post(SESSIONS, headers=headers, json=checkout_body()) for _ in range(3))
    )
    original = await first
    assert original.status_code == 201, original.text
    for retry in retries:
        assert retry.status_code == 201, retry.text
        assert retry.content == original.content
    assert len(stripe_http.fake.sessions) == 1
    assert len([a for a in stripe_http.attempts if a.path == SESSIONS]) == 1

    stripe_http.fault = Fault.NONE
    other = await service.post(SESSIONS, headers=headers, json=checkout_body(price="pro_yearly"))
    assert other.status_code == 409, other.text
    assert other.json()["type"] == "urn:billing-service:problem:idempotency-key-reused"
    replay = await service.post(SESSIONS, headers=headers, json=checkout_body())
    assert replay.content == original.content
    assert len(stripe_http.fake.sessions) == 1


async def test_a_retry_with_another_body_while_the_first_runs_is_409_at_once(
    service: httpx.AsyncClient, stripe_http: StripeServer, billing_key: str
) -> None:
    """A different body on a key in use is refused without waiting, and without Stripe."""
    headers = bearer(billing_key) | {"Idempotency-Key": "order-2"}
    first = asyncio.create_task(service.post(SESSIONS, headers=headers, json=checkout_body()))
    await asyncio.sleep(0.3)
    other = await service.post(SESSIONS, headers=headers, json=checkout_body(price="pro_yearly"))
    assert not first.done()
    assert other.status_code == 409
    assert other.json()["type"] == "urn:billing-service:problem:idempotency-key-reused"
    assert (await first).status_code == 201
    assert len(stripe_http.fake.sessions) == 1


async def test_a_killed_owner_blocks_its_key_only_until_its_lease_ends(
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    stripe_http: StripeServer,
    slow_stripe_settings: Settings,
    billing_key: str,
) -> None:
    """`kill -9` on the process running a checkout: a retry elsewhere waits its bound, then
    gets 409 request-in-progress with Retry-After; after that the retry takes the key over and
    gets the session Stripe opened for the dead request, so there is still only one."""
    timing = {"stripe_timeout_seconds": 1.0, "stripe_max_network_retries": 0}
    settings = slow_stripe_settings.model_copy(update=timing)
    patience = Patience.for_stripe_calls(settings, 2)
    assert (patience.wait_seconds, patience.lease_seconds) == (2.0, 4.0)
    await sync_example_catalog(pool, settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env | {
        "BILLING_PORT": str(port),
        "BILLING_WORKER_ENABLED": "false",
        "BILLING_STRIPE_SECRET_KEY": "sk_test_fake",
        "BILLING_STRIPE_API_BASE": stripe_http.url,
        "BILLING_STRIPE_TIMEOUT_SECONDS": "1",
        "BILLING_STRIPE_MAX_NETWORK_RETRIES": "0",
        "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
    }
    doomed = await start_service(env, base)
    headers = bearer(billing_key) | {"Idempotency-Key": "order-3"}
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            made = await http.put(
                "/v1/customers/user_1", headers=bearer(billing_key), json={"email": "a@b.co"}
            )
            assert made.status_code == 201
            stripe_http.fault, stripe_http.fault_path = Fault.SLOW, SESSIONS
            stripe_http.delay_seconds = 0.8
            cut_off = asyncio.create_task(
                http.post(SESSIONS, headers=headers, json=checkout_body())
            )
            for _ in range(500):  # until the session request is with Stripe
                if any(a.path == SESSIONS for a in stripe_http.attempts):
                    break
                await asyncio.sleep(0.02)
            doomed.kill()  # SIGKILL: the request's process dies holding the key
            with pytest.raises(httpx.TransportError):
                await cut_off
    finally:
        with suppress(ProcessLookupError):  # already dead and reaped
            doomed.kill()
        await doomed.wait()
    assert await pool.fetchval("SELECT count(*) FROM idempotent_requests") == 1

    async with app_client(settings) as survivor:
        waited = await survivor.post(SESSIONS, headers=headers, json=checkout_body())
        assert waited.status_code == 409, waited.text
        assert waited.json()["type"] == "urn:billing-service:problem:request-in-progress"
        retry_after = int(waited.headers["retry-after"])
        assert 1 <= retry_after <= 4
        await asyncio.sleep(retry_after)
        taken_over = await survivor.post(SESSIONS, headers=headers, json=checkout_body())
        assert taken_over.status_code == 201, taken_over.text
        again = await survivor.post(SESSIONS, headers=headers, json=checkout_body())
    assert again.content == taken_over.content
    assert len(stripe_http.fake.sessions) == 1
    assert taken_over.json()["id"] in stripe_http.fake.sessions
