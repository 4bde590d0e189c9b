"""The asyncpg connection pool, with JSON codecs and session settings every query relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

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


class Pool(asyncpg.Pool):
    """asyncpg's pool, returning a connection at rest to the pool at once.

    asyncpg releases every connection inside `asyncio.shield`, a new Task and a turn of the
    event loop per checkout (~20 µs of a ~50 µs query), so that a cancelled caller cannot leave
    a reset half done. When there is nothing to reset (no transaction, no cancellation under
    way, nothing else pending, and our reset does nothing), the release is a few attribute
    changes with no `await`, which cancellation cannot interrupt; anything else takes asyncpg's
    own path."""

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if timeout is None and self._at_rest(connection):
            con, holder = connection._con, connection._holder
            con._on_release()
            con._listeners.clear()  # what asyncpg's reset does before its rollback check
            con._log_listeners.clear()
            holder._timeout = None
            holder._release()
            holder._setup_inactive_callback()
            return
        await super().release(connection, timeout=timeout)

    def _at_rest(self, connection: Any) -> bool:
        """Whether asyncpg's release of `connection` would finish without awaiting anything."""
        if type(connection) is not PoolConnectionProxy:
            return False
        # asyncpg's private state, which its stubs do not describe
        pool: Any = self
        proxy: Any = connection
        con, holder = proxy._con, proxy._holder
        return bool(
            con is not None
            and holder._pool is self
            and holder._in_use is not None
            and pool._initialized
            and not (pool._closing or pool._closed)
            and pool._reset is _keep_session
            and not con.is_closed()
            and con._protocol.queries_count < holder._max_queries
            and holder._generation == pool._generation
            and not con._protocol._is_cancelling()
            and not con._protocol.is_in_transaction()
            and con._top_xact is None
        )


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    publishes_usage: bool = False,
    connect_timeout: float = 60.0,
) -> asyncpg.Pool:
    """The arguments are `asyncpg.create_pool`'s, whose defaults `Pool` does not have
    (`connect_timeout` is `asyncpg.connect`'s `timeout`).

    With `publishes_usage`, a track's counter and credit moves on these connections do not
    notify in their transaction: whoever tracks publishes the customer after commit
    (services/usage_publisher.py, migration 0017)."""
    settings = {"application_name": "billing-service", "timezone": "UTC"}
    if publishes_usage:
        settings["billing.publishes_usage"] = "on"
    pool = Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        server_settings=settings,
        timeout=connect_timeout,
    )
    await pool
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
