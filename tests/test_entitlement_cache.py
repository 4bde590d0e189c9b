"""Checks and entitlements answered from each process's snapshot stay correct across replicas:
real `serve` processes on one database, every change reaching every process through
LISTEN/NOTIFY (migration 0017), with a cache time far longer than any test so that only the
notifications can explain what the tests see."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import APP_HOST, WEBHOOK_SECRETS, app_client, issue_key
from tests.routes.test_checkout import bearer, checkout_body
from tests.routes.test_usage import catalog_with, check, track
from tests.routes.test_webhooks import post_event, stripe_price
from tests.stripe_fakes import stripe_event
from tests.stripe_server import StripeServer, sync_example_catalog
from tests.support import ADMIN_DATABASE, free_port, start_service, with_database
from tests.test_invalidation import _listener_pid

CONVERGENCE_BOUND = 2.0  # seconds; generous: the measured p99 is in docs/cache.md
INVALIDATED_CUSTOMER = 'billing_entitlement_cache_invalidations_total{scope="customer"}'
PATIENT = {"BILLING_ENTITLEMENT_CACHE_SECONDS": "300", "BILLING_LOG_LEVEL": "warning"}


@asynccontextmanager
async def services(
    *envs: dict[str, str],
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One `billing-service serve` per environment, each with a client for it."""
    processes, clients = [], []
    try:
        for env in envs:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            processes.append(await start_service(env | {"BILLING_PORT": str(port)}, base))
            # Each call may take 30 s; waiting for one of the client's connections is unbounded,
            # since a thousand calls queue for a hundred connections on a slow machine.
            clients.append(httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30, pool=None)))
        yield clients
    finally:
        for client in clients:
            await client.aclose()
        for process in processes:
            process.terminate()
            await process.wait()


async def metric(http: httpx.AsyncClient, sample: str) -> float:
    """One sample of the process's /metrics, by its exact name and labels."""
    text = (await http.get("/metrics")).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found is not None, sample
    return float(found[1])


def heard_the_track(client: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
    """Whether the process has heard both announcements of a customer's first track: the new
    customer record (a trigger) and the track itself (its own, after commit)."""

    async def heard() -> bool:
        sample = 'billing_invalidation_notifications_total{channel="billing_entitlements"}'
        return await metric(client, sample) >= 2

    return heard


def replica_env(cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env | PATIENT | {"BILLING_WORKER_ENABLED": "false"}


async def eventually(
    check: Callable[[], Awaitable[bool]], bound: float = CONVERGENCE_BOUND
) -> float:
    """Poll `check` until it holds; how long that took. Fails after `bound` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > bound:
            raise AssertionError(f"not true within {bound} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def ai_calls(client: httpx.AsyncClient, key: str, customer: str = "user_1") -> dict[str, Any]:
    """The customer's ai_calls entitlement as this process answers it."""
    response = await client.get(f"/v1/customers/{customer}/entitlements", headers=bearer(key))
    assert response.status_code == 200, response.text
    [feature] = [f for f in response.json()["features"] if f["feature"] == "ai_calls"]
    return dict(feature)


def shows(client: httpx.AsyncClient, key: str, **expected: object) -> Callable[[], Awaitable[bool]]:
    async def holds() -> bool:
        feature = await ai_calls(client, key)
        return all(feature[name] == value for name, value in expected.items())

    return holds


async def test_a_track_on_one_process_is_seen_there_at_once_and_by_another_within_the_bound(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """Both processes hold the customer's snapshot; a track on A is in A's very next check
    (it reads its own writes) and in B's within the bound, ten times over, B answering its
    other checks from memory."""
    await catalog_with(pool, limit=100, reset="month")
    key = await issue_key(pool, Scope.USAGE)
    env = replica_env(cli_env)
    async with services(env, env) as (first, second):
        for n in range(1, 11):
            for client in (first, second):
                assert (await check(client, key)).json()["used"] == n - 1
            tracked = await track(first, key)
            assert tracked.json()["used"] == n
            assert (await check(first, key)).json()["used"] == n

            async def second_sees(n: int = n) -> bool:
                return bool((await check(second, key)).json()["used"] == n)

            await eventually(second_sees)
        assert await metric(second, "billing_entitlement_cache_hits_total") >= 9
        assert await metric(second, INVALIDATED_CUSTOMER) >= 10
        assert await metric(second, "billing_entitlement_cache_size") == 1


async def test_a_catalog_limit_change_reaches_every_process(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """A new limit put over HTTP on A applies there at once and on B within the bound; one
    changed in plain SQL (no code of ours involved) reaches both."""
    await catalog_with(pool, limit=5, reset="month")
    key = await issue_key(pool, Scope.USAGE)
    admin = await issue_key(pool, Scope.ADMIN)
    env = replica_env(cli_env)
    async with services(env, env) as (first, second):
        for client in (first, second):
            assert (await ai_calls(client, key))["limit"] == 5
        free = {
            "name": "Free",
            "default": True,
            "display_order": 0,
            "features": {"ai_calls": {"limit": 7, "reset": "month"}},
        }
        put = await first.put("/v1/plans/free", headers=bearer(admin), json=free)
        assert put.status_code == 200, put.text
        assert (await ai_calls(first, key))["limit"] == 7
        await eventually(shows(second, key, limit=7))

        await pool.execute('UPDATE plan_features SET "limit" = 9 WHERE "limit" = 7')
        for client in (first, second):
            await eventually(shows(client, key, limit=9))
        assert (
            await metric(second, 'billing_entitlement_cache_invalidations_total{scope="catalog"}')
            >= 2
        )


@asynccontextmanager
async def with_stripe(
    cli_env: dict[str, str], pool: asyncpg.Pool, settings: Settings, stripe: StripeServer
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, str, str]]:
    """A (Stripe configured, processing webhooks) and B (reading only), the example catalog
    synced to the fake Stripe, and user_1 known to Stripe; yields both, a key, user_1's
    Stripe id."""
    await sync_example_catalog(
        pool,
        settings.model_copy(
            update={"stripe_secret_key": SecretStr("sk_test_fake"), "stripe_api_base": stripe.url}
        ),
    )
    key = await issue_key(pool, Scope.BILLING)
    writer = replica_env(cli_env) | {
        "BILLING_WORKER_ENABLED": "true",
        "BILLING_STRIPE_SECRET_KEY": "sk_test_fake",
        "BILLING_STRIPE_API_BASE": stripe.url,
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
        "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
    }
    async with services(writer, replica_env(cli_env)) as (first, second):
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
        yield first, second, key, stripe_id


async def test_a_webhook_that_downgrades_a_plan_reaches_every_process(
    cli_env: dict[str, str], pool: asyncpg.Pool, settings: Settings, stripe_http: StripeServer
) -> None:
    """Both processes answer Pro's limit from memory; the subscription's cancellation, posted
    to A and applied by A's worker, brings both back to Free's limit within the bound."""
    async with with_stripe(cli_env, pool, settings, stripe_http) as (first, second, key, stripe_id):
        subscription = stripe_http.fake.add_subscription(
            stripe_id, await stripe_price(pool, "pro_monthly")
        )
        event = stripe_event("customer.subscription.updated", subscription)
        assert (await post_event(first, event)).status_code == 200
        for client in (first, second):
            await eventually(shows(client, key, limit=500), bound=10.0)
            assert (await ai_calls(client, key))["limit"] == 500  # now from memory

        subscription.update(
            status="canceled", canceled_at=int(time.time()), ended_at=int(time.time())
        )
        event = stripe_event("customer.subscription.deleted", subscription)
        assert (await post_event(first, event)).status_code == 200
        for client in (first, second):
            await eventually(shows(client, key, limit=5), bound=10.0)
        assert await metric(second, "billing_entitlement_cache_hits_total") >= 1


async def test_a_credit_grant_reaches_every_process(
    cli_env: dict[str, str], pool: asyncpg.Pool, settings: Settings, stripe_http: StripeServer
) -> None:
    """A paid credit pack, posted to A and applied by A's worker, shows as 1,000 credits on
    both processes, which held the customer's snapshot without them."""
    async with with_stripe(cli_env, pool, settings, stripe_http) as (first, second, key, _):
        for client in (first, second):
            assert (await ai_calls(client, key))["credits"] == 0
        created = await first.post(
            "/v1/checkout/sessions",
            headers=bearer(key),
            json=checkout_body("user_1", price="ai_credits_1000"),
        )
        session = stripe_http.fake.complete_checkout(created.json()["id"])
        session.update(amount_total=1000, currency="usd")
        event = stripe_event("checkout.session.completed", dict(session))
        assert (await post_event(first, event)).status_code == 200
        for client in (first, second):
            await eventually(shows(client, key, credits=1000, remaining=1005), bound=10.0)


async def test_1000_concurrent_tracks_at_a_limit_of_500_across_two_processes_count_exactly_500(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """500 tracks on each of two processes, checks interleaved so both caches are busy: exactly
    500 are allowed and counted (track decides in PostgreSQL), and afterwards both processes'
    checks say 500 used and refuse."""
    await catalog_with(pool, limit=500, reset="month")
    key = await issue_key(pool, Scope.USAGE)
    env = replica_env(cli_env) | {"BILLING_DATABASE_POOL_MAX": "10"}
    async with services(env, env) as clients:
        calls = [track(client, key) for client in clients for _ in range(500)]
        checks = [check(client, key) for client in clients for _ in range(100)]
        responses = await asyncio.gather(*calls, *checks)
        tracks = responses[: len(calls)]
        assert {r.status_code for r in responses} == {200}
        assert sum(r.json()["allowed"] for r in tracks) == 500
        assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 500
        assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE recorded") == 500
        for client in clients:

            async def settled(client: httpx.AsyncClient = client) -> bool:
                answer = (await check(client, key)).json()
                return answer["used"] == 500 and answer["allowed"] is False

            await eventually(settled)


async def test_a_killed_listener_sends_reads_to_the_database_until_it_is_back(
    settings: Settings, pool: asyncpg.Pool, server_url: str, database_url: str
) -> None:
    """pg_terminate_backend on the listener while the database takes no new connections: the
    cache is emptied and bypassed at once, so counters changed in plain SQL meanwhile (whose
    notifications nobody hears) are in the very next answers; once the listener is back, checks
    are answered from memory again and changes flow again."""
    await catalog_with(pool, limit=100, reset="month")
    key = await issue_key(pool, Scope.USAGE)
    patient = settings.model_copy(update={"entitlement_cache_seconds": 300, "database_pool_min": 3})
    database = urlsplit(database_url).path.lstrip("/")
    admin_db = await asyncpg.connect(with_database(server_url, ADMIN_DATABASE))
    async with app_client(patient) as client:
        assert (await track(client, key)).json()["used"] == 1
        assert (await check(client, key)).json()["used"] == 1
        await eventually(heard_the_track(client))  # and ignored its own announcement
        assert (await check(client, key)).json()["used"] == 1
        assert await metric(client, "billing_entitlement_cache_hits_total") == 1
        first_pid = await _listener_pid(pool)
        assert first_pid is not None
        try:
            await admin_db.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", first_pid)

            async def listener_down() -> bool:
                return await metric(client, "billing_invalidation_listener_up") == 0

            await eventually(listener_down, 5.0)
            assert await metric(client, "billing_entitlement_cache_size") == 0
            for used in (5, 9):
                await pool.execute("UPDATE usage_counters SET used = $1", used)
                assert (await check(client, key)).json()["used"] == used
                assert (await ai_calls(client, key))["used"] == used
            assert await metric(client, "billing_entitlement_cache_bypassed_total") == 4
            assert await metric(client, "billing_entitlement_cache_size") == 0
        finally:
            await admin_db.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await admin_db.close()

        async def listener_back() -> bool:
            return await metric(client, "billing_invalidation_listener_up") == 1

        await eventually(listener_back, 10.0)
        hits = await metric(client, "billing_entitlement_cache_hits_total")
        for _ in range(2):
            assert (await check(client, key)).json()["used"] == 9
        assert await metric(client, "billing_entitlement_cache_hits_total") == hits + 1
        await pool.execute("UPDATE usage_counters SET used = 12")

        async def changed() -> bool:
            return bool((await check(client, key)).json()["used"] == 12)

        await eventually(changed)
