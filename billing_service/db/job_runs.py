"""SQL for the `job_runs` table: one row per scheduled or manual run of a periodic job."""

from __future__ import annotations

import uuid
from typing import Any

from billing_service.db.pool import Executor


async def start_run(conn: Executor, job: str) -> uuid.UUID:
    run_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO job_runs (job) VALUES ($1) RETURNING id", job
    )
    return run_id


async def finish_run(
    conn: Executor, run_id: uuid.UUID, *, succeeded: bool, counts: dict[str, int], errors: list[Any]
) -> None:
    await conn.execute(
        """
        UPDATE job_runs SET status = $2, finished_at = now(), counts = $3, errors = $4
        WHERE id = $1
        """,
        run_id,
        "succeeded" if succeeded else "failed",
        counts,
        errors,
    )


async def last_run_started(conn: Executor, job: str) -> Any:
    return await conn.fetchval("SELECT max(started_at) FROM job_runs WHERE job = $1", job)
