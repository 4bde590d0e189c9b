"""SQL the notification-fed caches share: whether the triggers that feed them are installed."""

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
