"""Rate limits: failed attempts per client address (which never lock out a valid credential),
and requests per API key."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Receive, Scope, Send

from billing_service.app import create_app
from billing_service.config import ConfigurationError, Settings, load_settings
from billing_service.ratelimit import FailureWindows, TokenBuckets, client_group
from billing_service.services.api_keys import Scope as KeyScope
from billing_service.state import AppState
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import catalog_with
from tests.support import free_port, start_service

LIMIT = 30  # BILLING_AUTH_FAILURES_PER_MINUTE's default
RATE_LIMITED = "urn:billing-service:problem:rate-limited"


def guess(n: int) -> dict[str, str]:
    return bearer(f"bsk_guess{n:040d}")


@dataclass
class Served:
    """One app spoken to from several client addresses, and the state its lifespan built."""

    clients: list[httpx.AsyncClient]
    state: dict[str, AppState] = field(default_factory=dict)

    @property
    def app(self) -> AppState:
        return self.state["app"]


def _noting_state(app: ASGIApp, served: Served) -> ASGIApp:
    async def noting(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        served.state["app"] = scope["state"]  # put there by the lifespan manager's wrapper

    return noting


@asynccontextmanager
async def clients(settings: Settings, *addresses: str) -> AsyncIterator[Served]:
    """One app (background work off), spoken to from several client addresses."""
    app = create_app(settings.model_copy(update={"worker_enabled": False}))
    async with LifespanManager(app) as manager:
        served = Served([])
        noting = _noting_state(manager.app, served)
        served.clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=noting, client=(address, 40000)),
                base_url="http://billing.test",
            )
            for address in addresses
        ]
        try:
            await served.clients[0].get("/healthz")
            yield served
        finally:
            for client in served.clients:
                await client.aclose()


@asynccontextmanager
async def statements_sent(pool: asyncpg.Pool) -> AsyncIterator[list[str]]:
    """Every statement the app's pool sends while the block runs, logged by asyncpg itself on
    each of the pool's connections."""
    sent: list[str] = []

    def note(record: asyncpg.connection.LoggedQuery) -> None:
        sent.append(record.query)

    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    for conn in held:
        conn.add_query_logger(note)
    for conn in held:
        await pool.release(conn)
    try:
        yield sent
    finally:
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            conn.remove_query_logger(note)
        for conn in held:
            await pool.release(conn)


async def _use_up_the_allowance(client: httpx.AsyncClient) -> None:
    for n in range(LIMIT):
        assert (await client.get("/v1/api-keys", headers=guess(n))).status_code == 401
    limited = await client.get("/v1/api-keys", headers=guess(LIMIT))
    assert limited.status_code == 429
    assert limited.json()["type"] == RATE_LIMITED
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_a_limited_address_still_serves_its_valid_admin_and_usage_keys(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """After 30 failed attempts an address gets 429 for guesses, but its valid admin and usage
    keys are served as before; other addresses are not affected at all."""
    admin, usage = await issue_key(pool, KeyScope.ADMIN), await issue_key(pool, KeyScope.USAGE)
    async with clients(settings, "203.0.113.7", "198.51.100.9") as served:
        attacker, neighbour = served.clients
        await _use_up_the_allowance(attacker)
        for _ in range(3):
            assert (await attacker.get("/v1/api-keys", headers=bearer(admin))).status_code == 200
            assert (await attacker.get("/v1/plans", headers=bearer(usage))).status_code == 200
            assert (await attacker.get("/v1/api-keys", headers=guess(99))).status_code == 429
            assert (await attacker.get("/v1/api-keys")).status_code == 429  # no key at all
        assert (await neighbour.get("/v1/api-keys", headers=guess(1))).status_code == 401
        assert (await neighbour.get("/v1/api-keys", headers=bearer(admin))).status_code == 200


async def test_500_concurrent_bad_keys_get_at_most_the_limit_of_401s(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Guesses sent all at once are counted before their lookups run: 30 get 401, the other
    470 get 429, and a valid key sent among them is still served."""
    admin = await issue_key(pool, KeyScope.ADMIN)
    async with clients(settings, "203.0.113.7") as served:
        (attacker,) = served.clients
        responses = await asyncio.gather(
            *(attacker.get("/v1/api-keys", headers=guess(n)) for n in range(500)),
            attacker.get("/v1/api-keys", headers=bearer(admin)),
        )
    statuses = Counter(response.status_code for response in responses[:-1])
    assert statuses == {401: LIMIT, 429: 500 - LIMIT}
    assert responses[-1].status_code == 200


async def test_a_limited_address_pays_no_query_for_a_bad_key(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Once limited, guesses are refused from memory (the app's pool sends nothing), while a
    valid key from the same address is looked up and served."""
    admin = await issue_key(pool, KeyScope.ADMIN)
    async with clients(settings, "203.0.113.7") as served:
        (attacker,) = served.clients
        await _use_up_the_allowance(attacker)
        async with statements_sent(served.app["pool"]) as sent:
            for n in range(50):
                assert (await attacker.get("/v1/api-keys", headers=guess(n))).status_code == 429
            assert sent == []
            assert (await attacker.get("/v1/api-keys", headers=bearer(admin))).status_code == 200
            assert any("api_keys" in statement for statement in sent)


async def test_customer_tokens_share_the_limit_without_locking_out_a_real_token(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Bad customer tokens count as failed attempts, concurrent ones included; once limited,
    a bad token costs no query and a real one still reads its entitlements."""
    await catalog_with(pool, limit=5, reset="month")
    usage = await issue_key(pool, KeyScope.USAGE)
    async with clients(settings, "203.0.113.7") as served:
        (browser,) = served.clients
        issued = await browser.post("/v1/customers/user_1/tokens", headers=bearer(usage))
        token = issued.json()["token"]
        path = "/v1/customers/user_1/entitlements"
        responses = await asyncio.gather(
            *(browser.get(path, headers=bearer(f"bct_guess{n:040d}")) for n in range(100))
        )
        assert Counter(r.status_code for r in responses) == {401: LIMIT, 429: 100 - LIMIT}
        async with statements_sent(served.app["pool"]) as sent:
            assert (await browser.get(path, headers=bearer("bct_" + "x" * 43))).status_code == 429
            assert sent == []
        assert (await browser.get(path, headers=bearer(token))).status_code == 200


async def test_a_busy_key_gets_429_without_slowing_other_keys(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Past its rate (and burst), a key is told when to retry; another key carries on."""
    busy, quiet = await issue_key(pool, KeyScope.ADMIN), await issue_key(pool, KeyScope.ADMIN)
    limited = settings.model_copy(update={"rate_limit_per_key": 1.0, "rate_limit_burst": 3.0})
    async with clients(limited, "192.0.2.1") as served:
        (client,) = served.clients
        statuses = [
            (await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {busy}"}))
            for _ in range(4)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        assert int(statuses[-1].headers["retry-after"]) >= 1
        other = await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {quiet}"})
        assert other.status_code == 200


async def test_the_forwarded_client_counts_only_when_the_proxy_is_trusted(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """`serve` honours `X-Forwarded-For` only from BILLING_FORWARDED_ALLOW_IPS: from a trusted
    proxy each forwarded client has its own allowance; from anyone else the header is ignored,
    so it cannot be used to dodge the limit."""
    for trusted, separate in (("127.0.0.1", True), ("192.0.2.1", False)):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = cli_env | {
            "BILLING_PORT": str(port),
            "BILLING_LOG_LEVEL": "warning",
            "BILLING_WORKER_ENABLED": "false",
            "BILLING_AUTH_FAILURES_PER_MINUTE": "3",
            "BILLING_FORWARDED_ALLOW_IPS": trusted,
        }
        service = await start_service(env, base)
        try:
            async with httpx.AsyncClient(base_url=base) as http:
                for n in range(3):
                    headers = guess(n) | {"X-Forwarded-For": "203.0.113.7"}
                    assert (await http.get("/v1/api-keys", headers=headers)).status_code == 401
                other = guess(9) | {"X-Forwarded-For": "198.51.100.9"}
                status = (await http.get("/v1/api-keys", headers=other)).status_code
        finally:
            service.terminate()
            await service.wait()
        assert status == (401 if separate else 429), trusted


def test_token_buckets_refill_at_the_rate() -> None:
    """A drained bucket answers how long to wait, and lets the next request through after it."""
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=2.0, clock=lambda: now[0])
    assert buckets.take("k") is None
    assert buckets.take("k") is None
    wait = buckets.take("k")
    assert wait is not None
    assert 0.49 < wait <= 0.5
    now[0] += 0.5
    assert buckets.take("k") is None
    assert buckets.take("other") is None


def test_failure_windows_charge_refund_and_forget_after_the_window() -> None:
    """Attempts are charged up to the limit, a refunded one frees its place, and a new window
    starts clean."""
    now = [0.0]
    windows = FailureWindows(limit=2, window=60.0, clock=lambda: now[0])
    assert windows.charge("a") is None
    assert windows.charge("a") is None
    assert windows.charge("a") == 60.0
    windows.refund("a")
    assert windows.charge("a") is None
    now[0] += 30
    assert windows.charge("a") == 30.0
    assert windows.charge("b") is None
    now[0] += 31
    assert windows.charge("a") is None


def test_ipv6_clients_are_counted_by_their_64() -> None:
    """Addresses of one IPv6 /64 share an allowance; IPv4 (also IPv4-mapped) stays per address."""
    assert client_group("2001:db8:1:2::1") == client_group("2001:db8:1:2:ffff::9")
    assert client_group("2001:db8:1:2::1") != client_group("2001:db8:1:3::1")
    assert client_group("::ffff:203.0.113.7") == client_group("203.0.113.7") == "203.0.113.7"
    assert client_group("unknown") == "unknown"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    """A host name in BILLING_FORWARDED_ALLOW_IPS (which uvicorn would silently never match)
    is refused with one line naming the variable; addresses, networks and `*` are taken."""
    with pytest.raises(ConfigurationError, match=r"^BILLING_FORWARDED_ALLOW_IPS: 'lb\.internal'"):
        load_settings(forwarded_allow_ips="10.0.0.1, lb.internal")
    for accepted in ("10.0.0.1", "10.0.0.0/8, ::1", "*"):
        assert load_settings(forwarded_allow_ips=accepted).forwarded_allow_ips == accepted
