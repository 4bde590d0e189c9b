"""What billed overage will cost a customer this period, shown with their entitlements.

Counted from the meter event outbox (the units `track` found billable), not recomputed from
`used` and the limit: credits spent and plan changes mid-period are already accounted there, so
the estimate is exactly what Stripe's meter is told.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from billing_service.db import overage_charges as db
from billing_service.services.usage import Entitlement


@dataclass(frozen=True, slots=True)
class OverageCharge:
    """Billable units this period, the price of one, and what they come to (minor units)."""

    billable_units: int
    unit_amount: Decimal
    currency: str

    @property
    def estimated_amount(self) -> Decimal:
        return self.unit_amount * self.billable_units


async def overage_charges(
    pool: asyncpg.Pool, entitlements: list[Entitlement]
) -> dict[uuid.UUID, OverageCharge]:
    """By feature id, the charge of each feature the customer's plan bills past its limit."""
    billed = [e for e in entitlements if e.overage == "bill" and e.enabled and e.plan_key]
    customer_id = billed[0].context.customer_id if billed else None
    if customer_id is None:
        return {}  # nothing billed, or a customer never seen (nothing tracked)
    windows = [
        db.BilledWindow(
            e.context.feature_id,
            e.plan_key or "",
            e.period.start if e.period else None,
            e.period.end if e.period else None,
        )
        for e in billed
    ]
    found = await db.select_billed_units(pool, customer_id, windows)
    return {
        feature_id: OverageCharge(units.units, units.unit_amount, units.currency)
        for feature_id, units in found.items()
    }
