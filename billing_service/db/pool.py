"""The asyncpg connection pool, with JSON codecs and session settings every query relies on."""

from __future__ import annotations

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


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        server_settings={"application_name": "billing-service", "timezone": "UTC"},
    )
    assert pool is not None
    return pool
