"""Background loops of a serving process: webhook processing and delivery, the daily job.

Both are safe to run in every replica: events are leased with `FOR UPDATE SKIP LOCKED`, and the
daily job takes an advisory lock and skips a run another replica has already made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time, timedelta

import asyncpg
import structlog

logger = structlog.get_logger(__name__)

IDLE_POLL_SECONDS = 2.0
ERROR_PAUSE_SECONDS = 5.0


class PollingWorker:
    """Runs `step` until stopped. `step` returns how much it did: after an empty round the worker
    waits `poll_seconds`, or less if `wake()` is called (new work was just stored)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[int]],
        *,
        poll_seconds: float = IDLE_POLL_SECONDS,
    ) -> None:
        self.name = name
        self.step = step
        self.poll_seconds = poll_seconds
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        logger.info("worker.started", worker=self.name)
        while True:
            try:
                done = await self.step()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.exception("worker.round_failed", worker=self.name)
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            if done:
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)


def next_run_after(now: datetime, at: time) -> datetime:
    """The next UTC moment at `at` strictly after `now`."""
    candidate = datetime.combine(now.date(), at, tzinfo=UTC)
    return candidate if candidate > now else candidate + timedelta(days=1)


async def run_daily(
    pool: asyncpg.Pool, job: str, at: time, work: Callable[[], Awaitable[object]]
) -> None:
    """Run `work` every day at `at` (UTC) in exactly one replica."""
    while True:
        now = datetime.now(UTC)
        await asyncio.sleep((next_run_after(now, at) - now).total_seconds())
        try:
            await run_once_across_replicas(pool, job, work)
        except Exception:
            logger.exception("job.failed", job=job)


async def run_once_across_replicas(
    pool: asyncpg.Pool, job: str, work: Callable[[], Awaitable[object]]
) -> bool:
    """Run unless another replica holds the job's lock or ran it in the last 12 hours."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"job:{job}"):
            return False
        try:
            recent = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM job_runs WHERE job = $1 "
                "AND started_at > now() - interval '12 hours')",
                job,
            )
            if recent:
                return False
            await work()
            return True
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"job:{job}")
