"""Migration 0017's triggers: which changes announce themselves on `billing_entitlements`, with
which payload, and the one exception (a track's counter and credit moves on the service's own
connections, which publish after commit instead)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from billing_service.db.notifications import notify_customers_changed
from billing_service.db.pool import create_pool
from billing_service.services.entitlement_cache import CHANNEL

MARK = "mark"


class Heard:
    """Payloads received on the channel by a listening connection, in order."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.marked = asyncio.Event()

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == MARK:
            self.marked.set()
        else:
            self.payloads.append(str(payload))

    async def after(self, conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
        """Everything heard until a mark sent after the changes committed (delivered in order)."""
        self.marked.clear()
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, MARK)
        await asyncio.wait_for(self.marked.wait(), 5)
        heard, self.payloads = self.payloads, []
        return heard


@pytest.fixture
async def heard(database_url: str) -> AsyncIterator[Heard]:
    listening = await asyncpg.connect(database_url)
    heard = Heard()
    await listening.add_listener(CHANNEL, heard)
    yield heard
    await listening.close()


async def _customer_and_feature(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    customer = await pool.fetchval(
        "INSERT INTO customers (external_id) VALUES ('user_1') RETURNING id"
    )
    feature = await pool.fetchval(
        "INSERT INTO features (key, name, kind) VALUES ('ai_calls', 'AI', 'metered') RETURNING id"
    )
    return customer, feature


async def test_counters_credits_customers_and_the_catalog_announce_themselves(
    pool: asyncpg.Pool, heard: Heard
) -> None:
    """Plain SQL on an ordinary connection: a counter or credit change names the customer (once
    per transaction), a new customer says `new`, a catalog statement says `*`."""
    customer, feature = await _customer_and_feature(pool)
    assert await heard.after(pool) == ["new", "*"]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO usage_counters (customer_id, feature_id, period_start, used) "
            "VALUES ($1, $2, now(), 3)",
            customer,
            feature,
        )
        await conn.execute(
            "INSERT INTO credit_balances (customer_id, feature_id, granted) VALUES ($1, $2, 10)",
            customer,
            feature,
        )
    assert await heard.after(pool) == [str(customer)]
    await pool.execute("UPDATE credit_balances SET spent = 1")
    assert await heard.after(pool) == [str(customer)]
    await pool.execute("UPDATE customers SET email = 'a@example.com'")
    assert await heard.after(pool) == []
    await pool.execute('UPDATE plan_features SET "limit" = 1')  # no row: still a statement
    assert await heard.after(pool) == ["*"]


async def test_the_services_connections_leave_a_tracks_moves_to_the_publisher(
    pool: asyncpg.Pool, database_url: str, heard: Heard
) -> None:
    """On a connection with `billing.publishes_usage`, counter changes and credits spent say
    nothing; credits granted still announce themselves; the publisher's statement names each
    customer by id."""
    customer, feature = await _customer_and_feature(pool)
    await heard.after(pool)
    service = await create_pool(database_url, min_size=1, max_size=1, publishes_usage=True)
    try:
        await service.execute(
            "INSERT INTO usage_counters (customer_id, feature_id, period_start, used) "
            "VALUES ($1, $2, now(), 3)",
            customer,
            feature,
        )
        await service.execute("UPDATE usage_counters SET used = used + 1")
        await service.execute(
            "INSERT INTO credit_balances (customer_id, feature_id, granted) VALUES ($1, $2, 10)",
            customer,
            feature,
        )
        assert await heard.after(service) == [str(customer)]  # the grant
        await service.execute("UPDATE credit_balances SET spent = spent + 1")
        assert await heard.after(service) == []
        await service.execute("UPDATE credit_balances SET granted = granted + 5")
        assert await heard.after(service) == [str(customer)]

        await notify_customers_changed(service, CHANNEL, ["user_1", "nobody"], "origin")
        assert await heard.after(service) == [f"{customer} origin"]
    finally:
        await service.close()
