"""SQL for the month partitions of the ledgers (migration 0026): list, make ahead, drop.

A partition `<table>_yYYYYmMM` holds one UTC month of its table's partition key; the
`<table>_default` partition holds the rows of any month without one. Partitions are made by the
SQL function `ensure_month_partitions`, which the migration, the prune job and data seeds share.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from billing_service.db.pool import Connection, Executor

# Waited for at most this long by the statements that change a ledger's partitions, so that a
# long transaction on the table makes the job try again at its next run instead of holding up
# every call queued behind its lock.
LOCK_TIMEOUT = "2s"

_NAME = re.compile(r"(?P<table>[a-z_]+)_y(?P<year>\d{4})m(?P<month>\d{2})")


@dataclass(frozen=True, slots=True)
class MonthPartition:
    """One month partition of a ledger: its table name and the UTC range it holds."""

    name: str
    start: datetime
    end: datetime


def month_of(name: str) -> MonthPartition:
    """The partition called `name` (as ensure_month_partitions names them)."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a month partition")
    year, month = int(match["year"]), int(match["month"])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return MonthPartition(name, start, end)


async def month_partitions(conn: Executor, table: str) -> list[MonthPartition]:
    """The month partitions of `table`, oldest first (the default partition left out)."""
    rows = await conn.fetch(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = $1::regclass AND c.relname ~ ('^' || $1 || '_y[0-9]{4}m[0-9]{2}$')
        """,
        table,
    )
    return sorted((month_of(row["relname"]) for row in rows), key=lambda p: p.start)


async def ensure_ahead(conn: Connection, table: str, *, months: int) -> int:
    """Make the partitions of this month and the `months` after it that are missing; how many
    were made. Rows of those months in the default partition move into them."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        made: int = await conn.fetchval(
            "SELECT ensure_month_partitions($1, now(), now() + make_interval(months => $2))",
            table,
            months,
        )
    return made


async def retention_cutoff(conn: Executor, *, retention_days: int) -> datetime:
    """The moment before which the retention lets rows go, by the database's clock."""
    cutoff: datetime = await conn.fetchval(
        "SELECT now() - make_interval(days => $1)", retention_days
    )
    return cutoff


async def drop(
    conn: Connection, table: str, partition: MonthPartition, *, keep: str | None = None
) -> tuple[int, int]:
    """Drop a month partition of `table`: (rows dropped, rows kept). The rows meeting `keep` (a
    condition on a row) move to the default partition first, where the row pruning judges them
    one by one. Writes to the month wait meanwhile, so no row starts meeting `keep` unseen; the
    table itself is locked only for the detach, the move of the kept rows and the drop."""
    name = f'"{partition.name}"'
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(f"LOCK TABLE {name} IN SHARE MODE")
        rows: int = await conn.fetchval(f"SELECT count(*) FROM {name}")  # noqa: S608
        kept = 0
        if keep is not None:
            kept = await conn.fetchval(f"SELECT count(*) FROM {name} WHERE {keep}")  # noqa: S608
        await conn.execute(f'ALTER TABLE "{table}" DETACH PARTITION {name}')
        if kept:
            await conn.execute(f'INSERT INTO "{table}" SELECT * FROM {name} WHERE {keep}')  # noqa: S608
        await conn.execute(f"DROP TABLE {name}")
    return rows - kept, kept


# The key before every real one: (customer_id, idempotency_key) > this covers every key.
_FIRST_KEY = (uuid.UUID(int=0), "")


async def forget_usage_keys(conn: Executor, partition: MonthPartition, *, batch_size: int) -> int:
    """Delete the idempotency keys (usage_event_keys) of the usage events in `partition`, batch
    by batch through its (customer_id, idempotency_key, created_at) index; the keys deleted."""
    after = _FIRST_KEY
    forgotten = 0
    while True:
        rows = await conn.fetch(
            f"""
            SELECT customer_id, idempotency_key, created_at FROM "{partition.name}"
            WHERE (customer_id, idempotency_key) > ($1, $2)
            ORDER BY customer_id, idempotency_key LIMIT $3
            """,  # noqa: S608 - a partition name from the catalog
            *after,
            batch_size,
        )
        if rows:
            result: str = await conn.execute(
                """
                DELETE FROM usage_event_keys k
                USING unnest($1::uuid[], $2::text[], $3::timestamptz[])
                      AS e (customer_id, idempotency_key, created_at)
                WHERE k.customer_id = e.customer_id AND k.idempotency_key = e.idempotency_key
                  AND k.created_at = e.created_at
                """,
                [row["customer_id"] for row in rows],
                [row["idempotency_key"] for row in rows],
                [row["created_at"] for row in rows],
            )
            forgotten += int(result.rsplit(maxsplit=1)[-1])
        if len(rows) < batch_size:
            return forgotten
        after = (rows[-1]["customer_id"], rows[-1]["idempotency_key"])
