"""SQL for the `plan_features` table: each plan's allowance per feature."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one plan grants of one feature. `limit` None means unlimited."""

    enabled: bool
    limit: int | None
    soft_limit: int | None
    reset: str | None
    overage: str
    # With overage 'bill': the price of a unit past the limit, in minor units.
    overage_unit_amount: Decimal | None = None
    overage_currency: str | None = None
    # The limits are per seat (times the subscription's quantity).
    per_seat: bool = False
    # Each member's own limit; None: members are not limited apart from the team.
    member_limit: int | None = None


@dataclass(frozen=True, slots=True)
class PlanFeature:
    plan_id: uuid.UUID
    feature_id: uuid.UUID
    allowance: Allowance


async def select_plan_features(conn: Executor) -> list[PlanFeature]:
    rows = await conn.fetch(
        'SELECT plan_id, feature_id, enabled, "limit", soft_limit, reset, overage, '
        "overage_unit_amount, overage_currency, per_seat, member_limit FROM plan_features"
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
                overage_unit_amount=row["overage_unit_amount"],
                overage_currency=row["overage_currency"],
                per_seat=row["per_seat"],
                member_limit=row["member_limit"],
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
            (plan_id, feature_id, enabled, "limit", soft_limit, reset, overage,
             overage_unit_amount, overage_currency, per_seat, member_limit)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        ON CONFLICT (plan_id, feature_id) DO UPDATE
        SET enabled = EXCLUDED.enabled, "limit" = EXCLUDED."limit",
            soft_limit = EXCLUDED.soft_limit, reset = EXCLUDED.reset, overage = EXCLUDED.overage,
            overage_unit_amount = EXCLUDED.overage_unit_amount,
            overage_currency = EXCLUDED.overage_currency, per_seat = EXCLUDED.per_seat,
            member_limit = EXCLUDED.member_limit
        """,
        [(plan_id, feature_id, *_allowance_columns(a)) for feature_id, a in allowances.items()],
    )


def _allowance_columns(a: Allowance) -> tuple[object, ...]:
    return (
        a.enabled, a.limit, a.soft_limit, a.reset, a.overage, a.overage_unit_amount,
        a.overage_currency, a.per_seat, a.member_limit,
    )  # fmt: skip
