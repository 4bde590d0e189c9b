"""SQL for `billing_meters` and `metered_prices`: the Stripe meters of billed features and the
metered prices that bill them, with the catalog's sync bookkeeping."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Meter:
    id: uuid.UUID
    feature_id: uuid.UUID
    event_name: str
    stripe_meter_id: str | None
    sync_generation: int
    synced_generation: int


@dataclass(frozen=True, slots=True)
class MeteredPrice:
    id: uuid.UUID
    plan_id: uuid.UUID
    feature_id: uuid.UUID
    lookup_key: str
    unit_amount: Decimal
    currency: str
    recurring_interval: str
    stripe_price_id: str | None
    active: bool
    sync_generation: int
    synced_generation: int


_METER = "id, feature_id, event_name, stripe_meter_id, sync_generation, synced_generation"
_PRICE = (
    "id, plan_id, feature_id, lookup_key, unit_amount, currency, recurring_interval, "
    "stripe_price_id, active, sync_generation, synced_generation"
)


def _price(row: asyncpg.Record) -> MeteredPrice:
    return MeteredPrice(**dict(row.items()))


async def ensure_meter(conn: Executor, feature_id: uuid.UUID, event_name: str) -> bool:
    """The feature's meter row, created if missing; True when it was created."""
    created = await conn.fetchval(
        "INSERT INTO billing_meters (feature_id, event_name) VALUES ($1, $2) "
        "ON CONFLICT (feature_id) DO NOTHING RETURNING true",
        feature_id,
        event_name,
    )
    return bool(created)


async def select_meters(conn: Executor) -> list[Meter]:
    rows = await conn.fetch(f"SELECT {_METER} FROM billing_meters ORDER BY event_name")  # noqa: S608
    return [Meter(**dict(row.items())) for row in rows]


async def select_meter_by_stripe_id(conn: Executor, stripe_meter_id: str) -> Meter | None:
    row = await conn.fetchrow(
        f"SELECT {_METER} FROM billing_meters WHERE stripe_meter_id = $1",  # noqa: S608
        stripe_meter_id,
    )
    return None if row is None else Meter(**dict(row.items()))


async def set_stripe_meter_id(conn: Executor, meter_id: uuid.UUID, stripe_meter_id: str) -> None:
    await conn.execute(
        "UPDATE billing_meters SET stripe_meter_id = $2, synced_generation = sync_generation "
        "WHERE id = $1",
        meter_id,
        stripe_meter_id,
    )


async def select_metered_prices(conn: Executor, *, active_only: bool = True) -> list[MeteredPrice]:
    rows = await conn.fetch(
        f"SELECT {_PRICE} FROM metered_prices WHERE active OR NOT $1 "  # noqa: S608
        "ORDER BY lookup_key, created_at",
        active_only,
    )
    return [_price(row) for row in rows]


async def select_metered_prices_pending_sync(conn: Executor) -> list[MeteredPrice]:
    """Live ones first, so a new price takes its lookup key before the old one is archived."""
    rows = await conn.fetch(
        f"SELECT {_PRICE} FROM metered_prices "  # noqa: S608
        "WHERE sync_generation > synced_generation ORDER BY active DESC, created_at"
    )
    return [_price(row) for row in rows]


async def insert_metered_price(
    conn: Executor,
    *,
    plan_id: uuid.UUID,
    feature_id: uuid.UUID,
    lookup_key: str,
    unit_amount: Decimal,
    currency: str,
    recurring_interval: str,
) -> MeteredPrice:
    row = await conn.fetchrow(
        f"""
        INSERT INTO metered_prices
            (plan_id, feature_id, lookup_key, unit_amount, currency, recurring_interval)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING {_PRICE}
        """,  # noqa: S608 - constant column list
        plan_id,
        feature_id,
        lookup_key,
        unit_amount,
        currency,
        recurring_interval,
    )
    assert row is not None
    return _price(row)


async def archive_metered_price(conn: Executor, price_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE metered_prices SET active = false, sync_generation = sync_generation + 1 "
        "WHERE id = $1 AND active",
        price_id,
    )


async def set_stripe_price_id(conn: Executor, price_id: uuid.UUID, stripe_price_id: str) -> None:
    await conn.execute(
        "UPDATE metered_prices SET stripe_price_id = $2 WHERE id = $1", price_id, stripe_price_id
    )


async def mark_metered_price_synced(conn: Executor, price_id: uuid.UUID, generation: int) -> None:
    await conn.execute(
        "UPDATE metered_prices SET synced_generation = greatest(synced_generation, $2) "
        "WHERE id = $1",
        price_id,
        generation,
    )


async def mark_metered_price_for_sync(conn: Executor, price_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE metered_prices SET sync_generation = sync_generation + 1 WHERE id = $1", price_id
    )


async def select_metered_price_by_stripe_id(
    conn: Executor, stripe_price_id: str
) -> MeteredPrice | None:
    row = await conn.fetchrow(
        f"SELECT {_PRICE} FROM metered_prices WHERE stripe_price_id = $1",  # noqa: S608
        stripe_price_id,
    )
    return None if row is None else _price(row)


async def select_stripe_metered_prices(
    conn: Executor, plan_id: uuid.UUID, interval: str | None
) -> list[str]:
    """The Stripe ids of the plan's live, synced metered prices for one billing interval: the
    items a subscription to that plan carries besides its plan price."""
    rows = await conn.fetch(
        "SELECT stripe_price_id FROM metered_prices WHERE plan_id = $1 AND active "
        "AND recurring_interval = $2 AND stripe_price_id IS NOT NULL ORDER BY lookup_key",
        plan_id,
        interval,
    )
    return [row["stripe_price_id"] for row in rows]
