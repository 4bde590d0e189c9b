"""SQL for the `stripe_key_attempts` table: which attempt an idempotency key has reached."""

from __future__ import annotations

from billing_service.db.pool import Executor


async def select_attempt(conn: Executor, base_key: str) -> int:
    """The attempt the key is at: 0 until Stripe has answered it with a failure."""
    attempt: int | None = await conn.fetchval(
        "SELECT attempt FROM stripe_key_attempts WHERE base_key = $1", base_key
    )
    return attempt or 0


async def move_on(conn: Executor, base_key: str, seen: int) -> None:
    """Start the attempt after `seen`, unless another caller that saw the same answer already
    did (concurrent callers share one key, so they share its answer and move on once)."""
    await conn.execute(
        """
        INSERT INTO stripe_key_attempts (base_key, attempt) VALUES ($1, $2 + 1)
        ON CONFLICT (base_key) DO UPDATE SET attempt = excluded.attempt
        WHERE stripe_key_attempts.attempt = $2
        """,
        base_key,
        seen,
    )
