"""The asyncpg connection pool, with JSON codecs and session settings every query relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

# A single connection, whether opened directly or borrowed from the pool.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
# What the table modules accept: a pool for one-off statements, a connection inside a transaction.
Executor: TypeAlias = Connection | asyncpg.Pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo on release: asyncpg still rolls back an open transaction, and every
    advisory lock we take is released in a `finally`. The default reset costs a round trip
    (`RESET ALL`, `UNLISTEN *`, …) on every release, which is most of a cheap query's price."""


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, publishes_usage: bool = False
) -> asyncpg.Pool:
    """With `publishes_usage`, a track's counter and credit moves on these connections do not
    notify in their transaction: whoever tracks publishes the customer after commit
    (services/usage_publisher.py, migration 0017)."""
    settings = {"application_name": "billing-service", "timezone": "UTC"}
    if publishes_usage:
        settings["billing.publishes_usage"] = "on"
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        server_settings=settings,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def session_lock(conn: Connection, name: str) -> AsyncIterator[None]:
    """Hold the session advisory lock `name` on `conn` for the block (no transaction needed,
    so the block may call Stripe); holders of the same name take turns, in any replica."""
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", name)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", name)
