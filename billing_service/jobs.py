"""Periodic jobs: what runs, on which cron schedule, in exactly one replica at a time.

Every replica runs the scheduler. When a job is due, a replica takes the job's advisory lock and
runs it unless `job_runs` shows a run since that scheduled moment, so a job runs once per slot
however many replicas wake up for it. The jobs log their own runs in `job_runs`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncpg
import structlog

from billing_service.config import Settings
from billing_service.cron import Cron
from billing_service.services import maintenance, reconcile
from billing_service.stripe_gateway import StripeGateway

logger = structlog.get_logger(__name__)


class JobReport(Protocol):
    """What a job run returns: counts for job_runs, and errors (a failed run has some)."""

    errors: list[str]

    def counts(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    schedule: Cron
    work: Callable[[], Awaitable[JobReport]]


def build_jobs(settings: Settings, pool: asyncpg.Pool, stripe: StripeGateway | None) -> list[Job]:
    """The jobs this process can run: reconciliation needs Stripe, pruning does not."""

    async def prune() -> JobReport:
        return await maintenance.prune(pool, retention_days=settings.retention_days)

    jobs = [Job(maintenance.JOB, Cron.parse(settings.job_schedules[maintenance.JOB]), prune)]
    if stripe is not None:

        async def reconcile_all() -> JobReport:
            return await reconcile.reconcile(pool, stripe)

        schedule = Cron.parse(settings.job_schedules[reconcile.JOB])
        jobs.append(Job(reconcile.JOB, schedule, reconcile_all))
    return jobs


async def run_once_across_replicas(pool: asyncpg.Pool, job: Job, *, slot: datetime) -> bool:
    """Run `job` for the scheduled `slot` unless another replica holds it or already ran it."""
    lock = f"billing.job:{job.name}"
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock):
            return False
        try:
            ran = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM job_runs WHERE job = $1 AND started_at >= $2)",
                job.name,
                slot,
            )
            if ran:
                return False
            await job.work()
            return True
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)


async def run_scheduler(
    pool: asyncpg.Pool, jobs: list[Job], *, now: Callable[[], datetime] | None = None
) -> None:
    """Sleep until the next job is due, run what is due, forever."""
    clock = now or (lambda: datetime.now(UTC))
    upcoming = {job.name: job.schedule.next_after(clock()) for job in jobs}
    logger.info("scheduler.started", jobs=sorted(upcoming))
    while jobs:
        slot = min(upcoming.values())
        await asyncio.sleep(max(0.0, (slot - clock()).total_seconds()))
        for job in jobs:
            if upcoming[job.name] > slot:
                continue
            try:
                await run_once_across_replicas(pool, job, slot=slot)
            except Exception:
                logger.exception("job.failed", job=job.name)
            upcoming[job.name] = job.schedule.next_after(slot)
