"""Faults: a database connection killed in the middle of a request fails it cleanly, saves
nothing, and the retry succeeds exactly once on a pool that recovered by itself."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.routes.test_checkout import bearer
from tests.routes.test_usage import catalog_with


async def _backend_waiting_on_a_lock(pool: asyncpg.Pool) -> int:
    for _ in range(200):
        pid = await pool.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'billing-service' "
            "AND wait_event_type = 'Lock' AND datname = current_database()"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the request never reached the lock")


async def test_a_track_whose_connection_is_killed_fails_cleanly_and_retries_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """pg_terminate_backend mid-track: a 503 with Retry-After, nothing recorded; the retry with
    the same idempotency key counts once, and the app keeps serving without a restart."""
    await catalog_with(pool, limit=100, reset="month")
    body = {"customer_id": "user_1", "feature": "ai_calls", "idempotency_key": "k-1"}
    first = await client.post("/v1/usage/track", headers=bearer(billing_key), json=body)
    assert first.json()["used"] == 1
    second = body | {"idempotency_key": "k-2"}

    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT * FROM usage_counters FOR UPDATE")  # the track will wait
        request = asyncio.create_task(
            client.post("/v1/usage/track", headers=bearer(billing_key), json=second)
        )
        victim = await _backend_waiting_on_a_lock(pool)
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", victim)
    failed = await request

    assert failed.status_code == 503
    assert failed.json()["type"] == "urn:billing-service:problem:database-unavailable"
    assert int(failed.headers["retry-after"]) > 0
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 1
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1

    retried = await client.post("/v1/usage/track", headers=bearer(billing_key), json=second)
    again = await client.post("/v1/usage/track", headers=bearer(billing_key), json=second)
    assert retried.status_code == again.status_code == 200
    assert retried.json() == again.json()
    assert retried.json()["used"] == 2
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 2
    assert (await client.get("/readyz")).status_code == 200
