"""The pool's direct release: connections at rest go back at once; a connection in a
transaction, mid-cancellation or closed still takes asyncpg's careful path; none is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from billing_service.db.pool import Pool, create_pool


@pytest.fixture
async def small_pool(database_url: str) -> AsyncIterator[Pool]:
    """Two connections, so that every test reuses them and a lost one shows at once."""
    pool = await create_pool(database_url, min_size=2, max_size=2)
    assert isinstance(pool, Pool)
    yield pool
    await pool.close()


async def _idle(pool: asyncpg.Pool) -> int:
    await asyncio.sleep(0)
    return pool.get_idle_size()


async def test_many_concurrent_checkouts_share_two_connections_and_all_come_back(
    small_pool: Pool,
) -> None:
    """200 concurrent queries through two connections all answer; afterwards both are idle
    and the same two backends served everything."""
    backends = await asyncio.gather(
        *(small_pool.fetchval("SELECT pg_backend_pid()") for _ in range(200))
    )
    assert len(set(backends)) == 2
    assert await _idle(small_pool) == 2


async def test_a_released_connection_cannot_be_used_again(small_pool: Pool) -> None:
    """A connection at rest takes the direct release, which detaches the handle given out,
    as asyncpg's own release does."""
    async with small_pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        assert small_pool._at_rest(conn)
    with pytest.raises(asyncpg.InterfaceError):
        await conn.fetchval("SELECT 1")


async def test_a_connection_left_in_a_transaction_is_rolled_back_on_release(
    small_pool: Pool,
) -> None:
    """An unmanaged BEGIN left open is rolled back before the connection is reused: its row
    never becomes visible and the next user is not inside a transaction."""
    async with small_pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE pool_release_probe (n int)")
        assert not small_pool._at_rest(conn)  # asyncpg's path, which rolls back
    for _ in range(2):
        async with small_pool.acquire() as conn:
            assert not conn.is_in_transaction()
            exists = await conn.fetchval("SELECT to_regclass('pool_release_probe') IS NOT NULL")
            assert exists is False
    assert await _idle(small_pool) == 2


async def test_a_caller_cancelled_mid_query_returns_its_connection_in_working_order(
    small_pool: Pool,
) -> None:
    """Cancelling a caller while its query runs (a timeout, a client gone) leaves no connection
    checked out and none busy: the pool answers at once afterwards."""

    async def slow() -> None:
        async with small_pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep(30)")

    for _ in range(3):
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(small_pool.fetchval("SELECT 1") for _ in range(10)))
    assert results == [1] * 10
    assert await _idle(small_pool) == 2


async def test_a_connection_killed_while_checked_out_is_replaced(
    small_pool: Pool, pool: asyncpg.Pool
) -> None:
    """A backend terminated under a caller fails that caller's query; releasing the dead
    connection gives the pool a fresh one, and later queries succeed."""
    async with small_pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        # asyncpg reports a backend killed under a query either way, as the stock pool does
        lost = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        with pytest.raises((*lost, ConnectionError)):
            await conn.fetchval("SELECT 1")
    results = await asyncio.gather(*(small_pool.fetchval("SELECT 2") for _ in range(4)))
    assert results == [2] * 4
