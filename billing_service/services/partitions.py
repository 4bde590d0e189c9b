"""The ledgers' month partitions over time: made months ahead, dropped whole after the retention.

Run by the prune job (services/maintenance.py) before it deletes rows one by one. A month's
partition goes once the whole month is older than the retention. For the usage ledger every row
of it may go (its rule is age alone): the month's idempotency keys are deleted, then the month
is dropped. For the Stripe ledger an event that must stay (still pending or failed, received or
processed within the retention) is moved to the default partition first, where the row pruning
judges it as before. So every row the retention keeps stays, and a row goes at most a month
after its retention ended (it waits for the rest of its month).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from billing_service.db import partitions
from billing_service.db.pool import Connection

# Months of partitions made ahead of the current one: a job that stops running leaves this
# much time before rows reach the default partition (where they still go in, only unsorted).
MONTHS_AHEAD = 3


@dataclass(frozen=True, slots=True)
class Ledger:
    """A partitioned table and which rows of a month past the retention must stay."""

    table: str
    # A condition on a row, `{cutoff}` standing for the retention's moment; None when age alone
    # decides (then no row of such a month stays).
    kept_if: str | None


LEDGERS = (
    Ledger("usage_events", kept_if=None),
    # The prune's rule for a Stripe event (maintenance._PRUNE["stripe_events"]), negated.
    Ledger(
        "stripe_events",
        kept_if=(
            "(status = 'processed' AND created_at < {cutoff} AND processed_at < {cutoff}) "
            "IS NOT TRUE"
        ),
    ),
)


@dataclass
class PartitionReport:
    """What a run did: partitions made and dropped, rows dropped with them and rows moved to
    the default partition (per table), and the usage idempotency keys deleted."""

    made: int = 0
    dropped: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    keys_forgotten: int = 0
    errors: list[str] = field(default_factory=list)


async def maintain(conn: Connection, *, retention_days: int, batch_size: int) -> PartitionReport:
    """Make the partitions ahead, then drop each month past the retention."""
    report = PartitionReport()
    for ledger in LEDGERS:
        try:
            report.made += await partitions.ensure_ahead(conn, ledger.table, months=MONTHS_AHEAD)
        except asyncpg.PostgresError as exc:
            report.errors.append(f"{ledger.table} partitions ahead: {exc}")
    cutoff = await partitions.retention_cutoff(conn, retention_days=retention_days)
    literal = await conn.fetchval("SELECT quote_literal($1::timestamptz)", cutoff)
    for ledger in LEDGERS:
        report.rows[ledger.table] = report.moved[ledger.table] = 0
        keep = None if ledger.kept_if is None else ledger.kept_if.format(cutoff=literal)
        for month in await partitions.month_partitions(conn, ledger.table):
            if month.end > cutoff:
                break
            try:
                if ledger.table == "usage_events":
                    report.keys_forgotten += await partitions.forget_usage_keys(
                        conn, month, batch_size=batch_size
                    )
                dropped, moved = await partitions.drop(conn, ledger.table, month, keep=keep)
            except asyncpg.PostgresError as exc:
                report.errors.append(f"{month.name}: {exc}")
                continue
            report.dropped += 1
            report.rows[ledger.table] += dropped
            report.moved[ledger.table] += moved
    return report
