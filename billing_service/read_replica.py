"""Reads that tolerate lag, served by a streaming replica (`BILLING_DATABASE_READ_URL`) while it is
up and close enough behind the primary, by the primary otherwise.

How far behind: each probe notes the primary's flushed WAL position and the moment it was read,
then asks the replica how far it has replayed. The replica holds everything the primary had
committed at the latest noted moment whose position it has replayed, so its lag is at most the time
since that moment. An idle primary writes nothing, so the replica stays caught up and the lag stays
near zero (unlike `now() - pg_last_xact_replay_timestamp()`, which grows while nothing commits);
a busy primary is always a little ahead, so the lag is the probe interval plus the real delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from billing_service.metrics import Metrics

logger = structlog.get_logger(__name__)

T = TypeVar("T")

# What says the replica cannot answer now: it is unreachable, restarting or shutting down, its
# connection broke (asyncpg's InternalClientError: a pooled connection handed out while the
# server's goodbye was still arriving), or it cancelled the query in a conflict with replay
# (40001). The read runs again on the primary; any other error is the query's own and is raised.
_REPLICA_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
)

_PRIMARY_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"
# NULL when the server is not a standby (the read URL names a primary): nothing to wait for.
_REPLAYED_POSITION = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
_PENDING_PROBES = 1000


def probe_interval(max_lag: float) -> float:
    """A quarter of the lag allowed, between 0.05 s and 1 s: lag is noticed well before it
    doubles, and an idle service asks the replica once a second."""
    return min(1.0, max(0.05, max_lag / 4))


class ReadRouting:
    """Chooses the pool of each lag-tolerant read and keeps the replica's health current."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None,
        *,
        max_lag: float,
        metrics: Metrics,
        probe_seconds: float | None = None,
        probe_timeout: float = 5.0,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._max_lag = max_lag
        self._metrics = metrics
        self._interval = probe_interval(max_lag) if probe_seconds is None else probe_seconds
        self._timeout = probe_timeout
        self._up = False
        self._caught_up_at: float | None = None  # monotonic; None until first caught up
        self._pending: deque[tuple[float, int]] = deque(maxlen=_PENDING_PROBES)
        self._task: asyncio.Task[None] | None = None
        if replica is not None:
            metrics.registry.register(ReplicaCollector(self))

    @property
    def up(self) -> bool:
        return self._up

    @property
    def lag(self) -> float | None:
        """Seconds the replica may be behind now: the time since the latest moment it is known
        to hold all the primary had (infinite before the first); None while it is down. It grows
        between probes, so a probe that stalls reads as lag, never as freshness."""
        if not self._up:
            return None
        if self._caught_up_at is None:
            return math.inf
        return max(0.0, time.monotonic() - self._caught_up_at)

    async def start(self) -> None:
        """Probe once (so the first requests already know), then keep probing in the
        background. A replica that is down at start-up only sends reads to the primary."""
        if self._replica is None:
            return
        await self.probe()
        # A replica a little behind a busy primary is known to have caught up only once a later
        # probe sees it pass a noted position: probe again at once, for up to a second, rather
        # than send the first reads to the primary.
        deadline = time.monotonic() + 1.0
        while self._up and self._caught_up_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            await self.probe()
        self._task = asyncio.create_task(self._probe_forever(), name="read-replica-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._replica is not None:
            await self._replica.close()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe()

    async def probe(self) -> None:
        """Note the primary's position, then measure the replica against what it noted. The
        primary not answering in time skips the probe (the lag grows meanwhile); the replica
        not answering, or answering with an error, marks it down."""
        assert self._replica is not None
        noted_at = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                position: int = await self._primary.fetchval(_PRIMARY_POSITION)
        except (*_REPLICA_FAILURES, asyncpg.PostgresError) as exc:
            logger.warning("read_replica.primary_unmeasured", error=type(exc).__name__)
            return
        self._pending.append((noted_at, position))
        try:
            async with asyncio.timeout(self._timeout):
                replayed: int | None = await self._replica.fetchval(_REPLAYED_POSITION)
        except (*_REPLICA_FAILURES, asyncpg.PostgresError) as exc:
            self._mark_down(type(exc).__name__)
            return
        if replayed is None:  # not a standby: it holds everything it has
            self._pending.clear()
            self._caught_up_at = noted_at
        while self._pending and replayed is not None and self._pending[0][1] <= replayed:
            self._caught_up_at = self._pending.popleft()[0]
        if not self._up:
            logger.info("read_replica.up")
        self._up = True

    def _mark_down(self, error: str) -> None:
        if self._up:
            logger.warning("read_replica.down", error=error)
        self._up = False

    def _choose(self) -> asyncpg.Pool:
        """The replica when it is up and within the lag allowed; else the primary, counted."""
        if self._replica is None:
            return self._primary
        lag = self.lag
        if lag is None:
            self._metrics.read_fallbacks.labels("down").inc()
            return self._primary
        if lag > self._max_lag:
            self._metrics.read_fallbacks.labels("lag").inc()
            return self._primary
        return self._replica

    async def read(self, query: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """Run `query` (reads only) on the replica, or on the primary when the replica is down
        or too far behind, or fails while answering (then it is marked down until a probe finds
        it again, and the query runs once more on the primary)."""
        pool = self._choose()
        if pool is self._primary:
            return await query(pool)
        try:
            return await query(pool)
        except _REPLICA_FAILURES as exc:
            self._mark_down(type(exc).__name__)
            self._metrics.read_fallbacks.labels("down").inc()
        return await query(self._primary)


class ReplicaCollector(Collector):
    """The replica's health, read at scrape time."""

    def __init__(self, routing: ReadRouting) -> None:
        self._routing = routing

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "billing_db_replica_up",
            "1 while the read replica answers its probe; 0 while lag-tolerant reads go to the "
            "primary because it does not.",
            1 if self._routing.up else 0,
        )
        lag = self._routing.lag
        yield GaugeMetricFamily(
            "billing_db_replica_lag_seconds",
            "How far the read replica may be behind the primary, as of its last probe "
            "(NaN while it is down).",
            float("nan") if lag is None else lag,
        )
