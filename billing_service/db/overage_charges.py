"""SQL for what billed overage will cost a customer this period: units and price per feature."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class BilledWindow:
    """One billed feature of a customer: under which plan, over which window."""

    feature_id: uuid.UUID
    plan_key: str
    start: datetime | None  # None: since ever (a window that never resets)
    end: datetime | None


@dataclass(frozen=True, slots=True)
class BilledUnits:
    units: int
    unit_amount: Decimal  # minor units, decimals allowed
    currency: str


async def select_billed_units(
    conn: Executor, customer_id: uuid.UUID, windows: list[BilledWindow]
) -> dict[uuid.UUID, BilledUnits]:
    """Per feature, the units written to the meter event outbox within its window (what is
    or will be reported to Stripe) and the plan's overage price."""
    rows = await conn.fetch(
        """
        SELECT w.feature_id, pf.overage_unit_amount, pf.overage_currency,
               (SELECT coalesce(sum(me.value), 0) FROM meter_events me
                WHERE me.customer_id = $1 AND me.feature_id = w.feature_id
                  AND me.occurred_at >= coalesce(w.window_start, '-infinity')
                  AND me.occurred_at < coalesce(w.window_end, 'infinity')) AS units
        FROM unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[])
             AS w(feature_id, plan_key, window_start, window_end)
        JOIN plans pl ON pl.key = w.plan_key
        JOIN plan_features pf ON pf.plan_id = pl.id AND pf.feature_id = w.feature_id
        WHERE pf.overage = 'bill'
        """,
        customer_id,
        [w.feature_id for w in windows],
        [w.plan_key for w in windows],
        [w.start for w in windows],
        [w.end for w in windows],
    )
    return {
        row["feature_id"]: BilledUnits(
            int(row["units"]), row["overage_unit_amount"], row["overage_currency"]
        )
        for row in rows
    }
