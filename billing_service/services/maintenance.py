"""Pruning: the ledgers and logs that only matter for a while are deleted after the retention.

Kept for good: customers, subscriptions, orders, credit grants and usage counters (the usage
history). Pruned after `BILLING_RETENTION_DAYS`: processed Stripe events, finished outgoing
webhook and email deliveries with their outbox events, usage idempotency records, job runs and
expired customer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import structlog

from billing_service.db import job_runs

logger = structlog.get_logger(__name__)

JOB = "prune"

_PRUNE = {
    "stripe_events": (
        "DELETE FROM stripe_events WHERE status = 'processed' "
        "AND processed_at < now() - make_interval(days => $1)"
    ),
    "webhook_deliveries": (
        "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'failed') "
        "AND updated_at < now() - make_interval(days => $1)"
    ),
    "email_deliveries": (
        "DELETE FROM email_deliveries WHERE status IN ('sent', 'skipped', 'failed') "
        "AND updated_at < now() - make_interval(days => $1)"
    ),
    "outbox_events": (
        "DELETE FROM outbox_events o WHERE created_at < now() - make_interval(days => $1) "
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = o.id) "
        "AND NOT EXISTS (SELECT 1 FROM email_deliveries e WHERE e.event_id = o.id)"
    ),
    "usage_events": "DELETE FROM usage_events WHERE created_at < now() - make_interval(days => $1)",
    "job_runs": (
        "DELETE FROM job_runs WHERE status <> 'running' "
        "AND started_at < now() - make_interval(days => $1)"
    ),
    "customer_tokens": "DELETE FROM customer_tokens WHERE expires_at < now()",
}


@dataclass
class PruneReport:
    deleted: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(self.deleted)


async def prune(pool: asyncpg.Pool, *, retention_days: int) -> PruneReport:
    """Delete what has outlived the retention, table by table; the run is logged in job_runs."""
    report = PruneReport()
    async with pool.acquire() as conn:
        run_id = await job_runs.start_run(conn, JOB)
        for table, statement in _PRUNE.items():
            args = () if table == "customer_tokens" else (retention_days,)
            try:
                result: str = await conn.execute(statement, *args)
            except asyncpg.PostgresError as exc:
                report.errors.append(f"{table}: {exc}")
                continue
            report.deleted[table] = int(result.rsplit(maxsplit=1)[-1])
        await job_runs.finish_run(
            conn, run_id, succeeded=not report.errors, counts=report.counts(), errors=report.errors
        )
    logger.info("prune.finished", **report.counts(), errors=len(report.errors))
    return report
