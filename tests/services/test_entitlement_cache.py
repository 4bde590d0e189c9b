"""The entitlement cache on its own terms: time moves decisions without any notification, a
load that straddles an invalidation is not kept, memory stays bounded, and size 0 turns it off.
Real PostgreSQL, the real listener and the real app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from billing_service.config import Settings
from billing_service.invalidation import Listener
from billing_service.metrics import Metrics
from billing_service.services.api_keys import Scope
from billing_service.services.entitlement_cache import EntitlementCache
from billing_service.services.usage import resolve
from tests.conftest import app_client, issue_key
from tests.routes.test_usage import Clock, catalog_with, check, track
from tests.test_entitlement_cache import eventually, heard_the_track, metric

GRACE = timedelta(days=7)
NOW = datetime(2026, 3, 14, 15, 30, tzinfo=UTC)


class SlowToAnswer:
    """The pool, except that a query's rows come back only when the test says so: a load that
    is still in flight while something changes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.read = asyncio.Event()
        self.answer = asyncio.Event()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows = await self._pool.fetch(query, *args)
        self.read.set()
        await self.answer.wait()
        return rows


@pytest.fixture
async def listening(database_url: str) -> AsyncIterator[tuple[EntitlementCache, Metrics]]:
    """A cache fed by a real listener on the test database."""
    metrics = Metrics()
    listener = Listener(database_url, metrics=metrics)
    cache = EntitlementCache(100, 300, listener, metrics=metrics)
    await listener.start()
    yield cache, metrics
    await listener.stop()


async def _used(cache: EntitlementCache, pool: asyncpg.Pool) -> int:
    [context] = await cache.contexts(pool, "user_1", "ai_calls", now=NOW, grace=GRACE)
    return resolve(context, now=NOW, grace=GRACE).used


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("change", ["committed elsewhere", "written by this process"])
async def test_a_load_that_straddles_an_invalidation_is_not_kept(
    listening: tuple[EntitlementCache, Metrics], pool: asyncpg.Pool, change: str
) -> None:
    """A load reads the counter, then the counter moves (a notification arrives, or this
    process evicts after its own track) before the load is stored: the load's answer is not
    kept, so the next read goes to the database and sees the move."""
    cache, metrics = listening
    await catalog_with(pool, limit=100, reset="month")
    customer_id = await pool.fetchval(
        "INSERT INTO customers (external_id) VALUES ('user_1') RETURNING id"
    )
    feature_id = await pool.fetchval("SELECT id FROM features WHERE key = 'ai_calls'")
    await pool.execute(
        "INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used) "
        "VALUES ($1, $2, '2026-03-01', '2026-04-01', 1)",
        customer_id,
        feature_id,
    )

    async def trusted() -> bool:
        return cache.trusted

    await eventually(trusted)
    slow = SlowToAnswer(pool)
    load = asyncio.create_task(_used(cache, slow))  # type: ignore[arg-type]
    await slow.read.wait()
    invalidations = "billing_entitlement_cache_invalidations_total"
    seen = _count(metrics, invalidations, scope="customer")

    async def notified() -> bool:
        return _count(metrics, invalidations, scope="customer") > seen

    await pool.execute("UPDATE usage_counters SET used = 2")
    if change == "committed elsewhere":
        await eventually(notified)
    else:
        cache.evict("user_1")
    slow.answer.set()
    assert await load == 1  # what the database said when the load read it
    assert _count(metrics, "billing_entitlement_cache_size") == 0  # and it was not kept
    await eventually(notified)
    misses = _count(metrics, "billing_entitlement_cache_misses_total")
    assert await _used(cache, pool) == 2
    assert _count(metrics, "billing_entitlement_cache_misses_total") == misses + 1
    assert await _used(cache, pool) == 2
    assert _count(metrics, "billing_entitlement_cache_hits_total") == 1


async def test_a_period_reset_and_a_grace_end_need_no_notification(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """With the snapshot in memory, moving the clock past the hour resets an hourly counter,
    and past a past-due subscription's grace end drops the customer to the free plan: nothing
    in the database changed, so no notification could have said so."""
    await catalog_with(pool, limit=5, reset="hour")
    clock = Clock(NOW)
    key = await issue_key(pool, Scope.USAGE)
    async with app_client(
        settings.model_copy(update={"entitlement_cache_seconds": 300}), clock=clock
    ) as client:
        await track(client, key, amount=3)
        assert (await check(client, key)).json()["used"] == 3
        await eventually(heard_the_track(client))  # and ignored its own announcement
        assert (await check(client, key)).json()["used"] == 3
        assert await metric(client, "billing_entitlement_cache_hits_total") == 1
        clock.now = NOW + timedelta(hours=1)
        assert (await check(client, key)).json()["used"] == 0

        await pool.execute(
            """
            INSERT INTO subscriptions (customer_id, stripe_subscription_id, status,
                stripe_price_id, price_id, current_period_start, current_period_end,
                past_due_since, stripe_created_at)
            SELECT c.id, 'sub_1', 'past_due', 'price_1', p.id, $1::timestamptz,
                   $1::timestamptz + interval '30 days', $1::timestamptz - interval '6 days', $1
            FROM customers c, prices p
            WHERE c.external_id = 'user_1' AND p.lookup_key = 'pro_monthly'
            """,
            clock.now,
        )

        async def on_pro() -> bool:
            return bool((await check(client, key)).json()["limit"] == 500)

        await eventually(on_pro)
        assert (await check(client, key)).json()["limit"] == 500
        hits = await metric(client, "billing_entitlement_cache_hits_total")
        clock.now += timedelta(days=1, seconds=1)
        assert (await check(client, key)).json()["limit"] == 5
        assert await metric(client, "billing_entitlement_cache_hits_total") == hits


async def test_memory_is_bounded_and_size_0_turns_the_cache_off(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """At most `size` customers are held (least recently used go first); with size 0 every
    check goes to the database and nothing is held."""
    await catalog_with(pool, limit=5, reset="month")
    key = await issue_key(pool, Scope.USAGE)
    small = settings.model_copy(update={"entitlement_cache_size": 2})
    async with app_client(small) as client:
        for customer in ("a", "b", "a", "c", "a"):
            assert (await check(client, key, customer=customer)).json()["allowed"]
        assert await metric(client, "billing_entitlement_cache_size") == 2
        assert await metric(client, "billing_entitlement_cache_hits_total") == 2  # a, a
        assert (await check(client, key, customer="b")).json()["allowed"]
        assert await metric(client, "billing_entitlement_cache_misses_total") == 4  # b went
    off = settings.model_copy(update={"entitlement_cache_size": 0})
    async with app_client(off) as client:
        for _ in range(3):
            assert (await check(client, key, customer="a")).json()["allowed"]
        assert await metric(client, "billing_entitlement_cache_size") == 0
        assert await metric(client, "billing_entitlement_cache_bypassed_total") == 3
        assert await metric(client, "billing_entitlement_cache_hits_total") == 0
