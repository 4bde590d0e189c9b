"""SQL the notification-fed caches share: whether the triggers that feed them are installed, and
the notifications the service sends itself."""

from __future__ import annotations

from billing_service.db.pool import Executor


async def trigger_installed(conn: Executor, table: str, trigger: str) -> bool:
    """True once the migration creating `trigger` on `table` has run."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)",
        table,
        trigger,
    )
    return bool(found)


async def notify_customers_changed(
    conn: Executor, channel: str, customer_keys: list[str], origin: str
) -> None:
    """One notification per customer on `channel`, `<their id> <origin>` (never their key), all
    in one transaction: it takes the notification queue's commit lock once for the lot."""
    await conn.execute(
        "SELECT pg_notify($1, id::text || ' ' || $3) FROM customers "
        "WHERE external_id = ANY($2::text[])",
        channel,
        customer_keys,
        origin,
    )
