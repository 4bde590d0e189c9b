"""Rate limits: failed logins per client address, and requests per API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.ratelimit import FailureWindows, TokenBuckets
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key


@asynccontextmanager
async def clients(settings: Settings, *addresses: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One app, spoken to from several client addresses."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        opened = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app, client=(address, 40000)),
                base_url="http://billing.test",
            )
            for address in addresses
        ]
        try:
            yield opened
        finally:
            for client in opened:
                await client.aclose()


async def test_guessing_keys_from_one_address_is_slowed_to_a_halt(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """After 30 failed logins a minute an address gets 429s, even with a valid key; other
    addresses are not affected."""
    key = await issue_key(pool, Scope.ADMIN)
    async with clients(settings, "203.0.113.7", "198.51.100.9") as (attacker, neighbour):
        for attempt in range(30):
            guess = {"Authorization": f"Bearer bsk_guess{attempt:040d}"}
            assert (await attacker.get("/v1/api-keys", headers=guess)).status_code == 401
        blocked = await attacker.get("/v1/api-keys", headers={"Authorization": f"Bearer {key}"})
        assert blocked.status_code == 429
        assert blocked.json()["type"] == "urn:billing-service:problem:rate-limited"
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        fine = await neighbour.get("/v1/api-keys", headers={"Authorization": f"Bearer {key}"})
        assert fine.status_code == 200


async def test_a_busy_key_gets_429_without_slowing_other_keys(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Past its rate (and burst), a key is told when to retry; another key carries on."""
    busy, quiet = await issue_key(pool, Scope.ADMIN), await issue_key(pool, Scope.ADMIN)
    limited = settings.model_copy(update={"rate_limit_per_key": 1.0, "rate_limit_burst": 3.0})
    async with clients(limited, "192.0.2.1") as (client,):
        statuses = [
            (await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {busy}"}))
            for _ in range(4)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        assert int(statuses[-1].headers["retry-after"]) >= 1
        other = await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {quiet}"})
        assert other.status_code == 200


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


def test_failure_windows_forget_after_the_window() -> None:
    """Failures count within a window; a new window starts clean."""
    now = [0.0]
    windows = FailureWindows(limit=2, window=60.0, clock=lambda: now[0])
    windows.record_failure("a")
    assert windows.blocked_for("a") is None
    windows.record_failure("a")
    assert windows.blocked_for("a") == 60.0
    now[0] += 61
    assert windows.blocked_for("a") is None
    windows.record_failure("a")
    assert windows.blocked_for("a") is None
