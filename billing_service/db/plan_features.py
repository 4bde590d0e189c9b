"""SQL for the `plan_features` table: each plan's allowance per feature."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one plan grants of one feature. `limit` None means unlimited."""

    enabled: bool
    limit: int | None
    soft_limit: int | None
    reset: str | None
    overage: str


@dataclass(frozen=True, slots=True)
class PlanFeature:
    plan_id: uuid.UUID
    feature_id: uuid.UUID
    allowance: Allowance


async def select_plan_features(conn: Executor) -> list[PlanFeature]:
    rows = await conn.fetch(
        'SELECT plan_id, feature_id, enabled, "limit", soft_limit, reset, overage '
        "FROM plan_features"
    )
    return [
        PlanFeature(
            plan_id=row["plan_id"],
            feature_id=row["feature_id"],
            allowance=Allowance(
                enabled=row["enabled"],
                limit=row["limit"],
                soft_limit=row["soft_limit"],
                reset=row["reset"],
                overage=row["overage"],
            ),
        )
        for row in rows
    ]


async def replace_plan_features(
    conn: Executor, plan_id: uuid.UUID, allowances: dict[uuid.UUID, Allowance]
) -> None:
    """Make the plan's allowances exactly `allowances` (feature id → allowance)."""
    await conn.execute(
        "DELETE FROM plan_features WHERE plan_id = $1 AND NOT (feature_id = ANY($2::uuid[]))",
        plan_id,
        list(allowances),
    )
    await conn.executemany(
        """
        INSERT INTO plan_features
            (plan_id, feature_id, enabled, "limit", soft_limit, reset, overage)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (plan_id, feature_id) DO UPDATE
        SET enabled = EXCLUDED.enabled, "limit" = EXCLUDED."limit",
            soft_limit = EXCLUDED.soft_limit, reset = EXCLUDED.reset, overage = EXCLUDED.overage
        """,
        [
            (plan_id, feature_id, a.enabled, a.limit, a.soft_limit, a.reset, a.overage)
            for feature_id, a in allowances.items()
        ],
    )
