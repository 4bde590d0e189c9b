"""The database floors: bare Starlette + asyncpg, one statement per request and nothing else (no
auth, no middleware, no logging), so that each service scenario can be set beside the least a
request of its kind costs on the same machine, under the same uvicorn settings.

B  (`pk_select`, `GET /bare`): one primary-key `SELECT` of a customer row, round robin over the
   bench's 100 customers. The floor of any request that reads PostgreSQL.
B2 (`conditional_update`, `GET /bare`): one conditional `UPDATE … RETURNING` on a real
   `usage_counters` row (the `projects` counter of one of the 100 customers, round robin; the
   table's trigger and indexes included), `used + 1` only below a cap. The floor of any request
   that writes.

Btrack1 is in `bench.track_floor`. Each floor reads `BENCH_DATABASE_URL` when it starts and opens
its pool as the service does: the service's default size, no reset round trip on release, UTC
sessions.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.bare_app import BODY
from billing_service.config import Settings

COUNTER_CAP = 10**15


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo on release, as in the service's pool (no `RESET ALL` round trip)."""


async def open_pool() -> asyncpg.Pool:
    """A pool on `BENCH_DATABASE_URL` sized and set like the service's default pool."""
    fields = Settings.model_fields
    pool = await asyncpg.create_pool(
        os.environ["BENCH_DATABASE_URL"],
        min_size=fields["database_pool_min"].default,
        max_size=fields["database_pool_max"].default,
        reset=_keep_session,
        command_timeout=30,
        # As on the service's own connections: a track's counter moves are announced after
        # commit, not by a notification inside each transaction (migration 0017).
        server_settings={
            "application_name": "billing-bench-floor",
            "timezone": "UTC",
            "billing.publishes_usage": "on",
        },
    )
    assert pool is not None
    return pool


class PkSelect:
    """B: one primary-key lookup per request."""

    _pool: asyncpg.Pool
    _ids: Iterator[uuid.UUID]

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        """Open the pool and load the 100 customers' ids."""
        self._pool = await open_pool()
        rows = await self._pool.fetch(
            "SELECT id FROM customers WHERE external_id ~ '^bench_[0-9]+$' ORDER BY external_id"
        )
        self._ids = itertools.cycle([row["id"] for row in rows])
        yield
        await self._pool.close()

    async def endpoint(self, request: Request) -> JSONResponse:
        """One primary-key SELECT, then the fixed body with the row's external id."""
        row = await self._pool.fetchrow(
            "SELECT id, external_id, email, created_at FROM customers WHERE id = $1",
            next(self._ids),
        )
        assert row is not None
        return JSONResponse(BODY | {"feature": row["external_id"]})


class ConditionalUpdate:
    """B2: one conditional counter update per request."""

    _pool: asyncpg.Pool
    _rows: Iterator[tuple[uuid.UUID, uuid.UUID, datetime]]

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        """Open the pool and load the 100 `projects` counter keys."""
        self._pool = await open_pool()
        rows = await self._pool.fetch(
            """
            SELECT uc.customer_id, uc.feature_id, uc.period_start
            FROM usage_counters uc
            JOIN features f ON f.id = uc.feature_id AND f.key = 'projects'
            JOIN customers c ON c.id = uc.customer_id AND c.external_id ~ '^bench_[0-9]+$'
            ORDER BY c.external_id
            """
        )
        if not rows:
            raise RuntimeError("no `projects` counters seeded for the bench customers")
        self._rows = itertools.cycle([(r[0], r[1], r[2]) for r in rows])
        yield
        await self._pool.close()

    async def endpoint(self, request: Request) -> JSONResponse:
        """One conditional counter update, then the fixed body with the new total."""
        customer_id, feature_id, period_start = next(self._rows)
        used = await self._pool.fetchval(
            """
            UPDATE usage_counters SET used = used + 1
            WHERE customer_id = $1 AND feature_id = $2 AND period_start = $3
              AND used + 1 <= $4
            RETURNING used
            """,
            customer_id,
            feature_id,
            period_start,
            COUNTER_CAP,
        )
        return JSONResponse(BODY | {"used": used})


_pk_select = PkSelect()
pk_select = Starlette(
    routes=[Route("/bare", _pk_select.endpoint, methods=["GET", "POST"])],
    lifespan=_pk_select.lifespan,
)

_conditional_update = ConditionalUpdate()
conditional_update = Starlette(
    routes=[Route("/bare", _conditional_update.endpoint, methods=["GET", "POST"])],
    lifespan=_conditional_update.lifespan,
)
