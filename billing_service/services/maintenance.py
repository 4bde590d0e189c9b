"""Pruning: the ledgers and logs that only matter for a while are deleted after the retention.

Kept for good: customers, subscriptions, orders, credit grants and usage counters (the usage
history). Pruned after `BILLING_RETENTION_DAYS`: processed Stripe events, finished outgoing
webhook and email deliveries with their outbox events, usage idempotency records, answered
Idempotency-Key reservations (the table of `services/idempotency.py`), job runs, and expired
customer tokens.

The two ledgers partitioned by month (`usage_events`, `stripe_events`, migration 0026) lose a
whole month at a time once it is past the retention (services/partitions.py, which also makes
their partitions months ahead); only the rows of their default partitions are deleted one by
one, by the same rules.

Each table is pruned in batches (one index range scan and one short transaction each), so a
large backlog never holds locks or builds WAL in one piece. A row is chosen by an inner SELECT
and its condition checked again by the DELETE, so a row that changed meanwhile (an event
replayed) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import structlog

from billing_service.db import job_runs
from billing_service.db.pool import Connection
from billing_service.services import partitions

logger = structlog.get_logger(__name__)

JOB = "prune"
BATCH_SIZE = 5_000


def _delete(table: str, condition: str, *, chosen_by: str) -> str:
    """A DELETE of the rows of `table` that `chosen_by` selects (at most $1, the batch size),
    checking `condition` again on each; $2 is the retention in days."""
    return f"DELETE FROM {table} WHERE id = ANY(ARRAY({chosen_by})) AND {condition}"  # noqa: S608


def _by_age(table: str, condition: str, *, oldest_first: str) -> str:
    """A batch of the rows meeting `condition`, oldest first by the indexed `oldest_first`:
    reading the index in order up to the batch size is the plan PostgreSQL picks however many
    rows match, never a scan of the whole table."""
    chosen = f"SELECT id FROM {table} WHERE {condition} ORDER BY {oldest_first} LIMIT $1"  # noqa: S608
    return _delete(table, condition, chosen_by=chosen)


_OLD = "now() - make_interval(days => $2)"

# Where the rule is about a later moment (processed_at, updated_at), the row's creation is bounded
# too: a row is created before it is processed or updated, so the extra bound never deletes a row
# the rule keeps, and it lets the index on the creation time find the rows. docs/query-plans.md
# shows each plan.
_PRUNE = {
    # Of the ledgers, only the default partitions: the months go whole (services/partitions.py).
    "stripe_events": _by_age(  # through stripe_events_status (status, created_at)
        "stripe_events_default",
        f"status = 'processed' AND created_at < {_OLD} AND processed_at < {_OLD}",
        oldest_first="created_at",
    ),
    # Endpoint by endpoint, through webhook_deliveries_endpoint (endpoint_id, created_at DESC),
    # the index the delivery log is read by: no index of its own for the prune to maintain.
    "webhook_deliveries": _delete(
        "webhook_deliveries",
        f"status IN ('delivered', 'failed') AND updated_at < {_OLD}",
        chosen_by=(
            "SELECT d.id FROM webhook_endpoints e CROSS JOIN LATERAL ("  # noqa: S608
            "SELECT id FROM webhook_deliveries WHERE endpoint_id = e.id "
            f"AND created_at < {_OLD} AND status IN ('delivered', 'failed') "
            f"AND updated_at < {_OLD} ORDER BY created_at LIMIT $1) AS d LIMIT $1"
        ),
    ),
    "email_deliveries": _by_age(
        "email_deliveries",
        f"status IN ('sent', 'skipped', 'failed') AND created_at < {_OLD} AND updated_at < {_OLD}",
        oldest_first="created_at",
    ),
    # An event goes once no delivery points at it. OFFSET 0 keeps each NOT EXISTS a probe of the
    # deliveries' (event_id, …) unique index per event, instead of an anti join that hashes
    # every delivery for each batch.
    "outbox_events": _by_age(
        "outbox_events",
        f"created_at < {_OLD} "  # noqa: S608
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d "
        "WHERE d.event_id = outbox_events.id OFFSET 0) "
        "AND NOT EXISTS (SELECT 1 FROM email_deliveries e "
        "WHERE e.event_id = outbox_events.id OFFSET 0)",
        oldest_first="created_at",
    ),
    # With each usage event its idempotency key goes (usage_event_keys), in the same statement.
    "usage_events": (
        "WITH gone AS ("  # noqa: S608
        + _by_age("usage_events_default", f"created_at < {_OLD}", oldest_first="created_at")
        + " RETURNING customer_id, idempotency_key, created_at), "
        "forgotten AS (DELETE FROM usage_event_keys k USING gone "
        "WHERE k.customer_id = gone.customer_id AND k.idempotency_key = gone.idempotency_key "
        "AND k.created_at = gone.created_at) "
        "SELECT count(*) FROM gone"
    ),
    # A reservation is kept while its request may still be running (its lease).
    "idempotent_requests": _by_age(
        "idempotent_requests",
        f"created_at < {_OLD} AND (response_status IS NOT NULL OR lease_expires_at <= now())",
        oldest_first="created_at",
    ),
    # Two small tables, read whole once a day: a few runs a day, and tokens that live minutes
    # (they go as soon as they expire, whatever the retention).
    "job_runs": _by_age(
        "job_runs", f"status <> 'running' AND started_at < {_OLD}", oldest_first="started_at"
    ),
    "customer_tokens": _by_age("customer_tokens", "expires_at < now()", oldest_first="expires_at"),
}


@dataclass
class PruneReport:
    deleted: dict[str, int] = field(default_factory=dict)
    # Month partitions made and dropped, and ledger rows moved to a default partition.
    partitions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return self.deleted | self.partitions


async def prune(
    pool: asyncpg.Pool, *, retention_days: int, batch_size: int = BATCH_SIZE
) -> PruneReport:
    """Make the ledgers' partitions ahead and drop their months past the retention, then delete
    what else has outlived it, table by table and batch by batch; the run is logged in job_runs.
    A table that fails is reported and the others are still pruned."""
    report = PruneReport()
    async with pool.acquire() as conn:
        run_id = await job_runs.start_run(conn, JOB)
        months = await partitions.maintain(
            conn, retention_days=retention_days, batch_size=batch_size
        )
        report.errors += months.errors
        report.deleted |= months.rows
        report.deleted["usage_event_keys"] = months.keys_forgotten
        report.partitions = {"partitions_made": months.made, "partitions_dropped": months.dropped}
        report.partitions |= {f"{table}_moved": moved for table, moved in months.moved.items()}
        for table, statement in _PRUNE.items():
            try:
                report.deleted[table] = report.deleted.get(table, 0) + await _prune_table(
                    conn, statement, retention_days, batch_size
                )
            except asyncpg.PostgresError as exc:
                report.errors.append(f"{table}: {exc}")
        await job_runs.finish_run(
            conn, run_id, succeeded=not report.errors, counts=report.counts(), errors=report.errors
        )
    logger.info("prune.finished", **report.counts(), errors=len(report.errors))
    return report


async def _prune_table(
    conn: Connection, statement: str, retention_days: int, batch_size: int
) -> int:
    """Run one table's batched DELETE until a batch comes back short; the rows deleted."""
    args = (batch_size, retention_days) if "$2" in statement else (batch_size,)
    deleted = 0
    while True:
        if statement.startswith("WITH"):  # counts what it deleted itself
            count: int = await conn.fetchval(statement, *args)
        else:
            result: str = await conn.execute(statement, *args)
            count = int(result.rsplit(maxsplit=1)[-1])
        deleted += count
        if count < batch_size:
            return deleted
