"""Tell every process which customers this one tracked, right after commit, many at a time.

A track on the service's own connections does not notify inside its transaction (migration
0017): a notifying commit holds a cluster-wide lock through its WAL flush, which would make
every track wait for every other. Instead, once a track has answered, its route hands the
customer here; one task sends all that gathered during its previous send in one statement, so
under load one notifying commit carries many customers, and when idle a customer goes at once.
Bounds: a customer waits for at most the send in flight and its own (milliseconds); should
the process die between a track's commit and the send, other processes keep their snapshot
for at most `entitlement_cache_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import asyncpg
import structlog

from billing_service.db.notifications import notify_customers_changed
from billing_service.services.entitlement_cache import CHANNEL

logger = structlog.get_logger(__name__)

MAX_PER_SEND = 1000
RETRY_SECONDS = 0.5
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class UsagePublisher:
    """Customers whose usage this process changed, on their way to every process."""

    def __init__(self, pool: asyncpg.Pool, origin: str) -> None:
        self._pool = pool
        self._origin = origin  # the sending process's cache ignores its own announcements
        self._pending: set[str] = set()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-publisher")

    def publish(self, customer_key: str) -> None:
        self._pending.add(customer_key)
        self._ready.set()

    async def stop(self) -> None:
        """Stop sending, after one last try for whatever is still waiting."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(*_ERRORS):
            while self._pending:
                await self._send()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                try:
                    await self._send()
                except _ERRORS as exc:
                    logger.warning("usage_publisher.send_failed", error=type(exc).__name__)
                    await asyncio.sleep(RETRY_SECONDS)

    async def _send(self) -> None:
        keys = list(itertools.islice(self._pending, MAX_PER_SEND))
        self._pending.difference_update(keys)
        try:
            await notify_customers_changed(self._pool, CHANNEL, keys, self._origin)
        except BaseException:
            self._pending.update(keys)
            raise
