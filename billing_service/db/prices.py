"""SQL for the `prices` and `price_grants` tables, including Stripe sync bookkeeping."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from billing_service.db.pool import Executor

_COLUMNS = (
    "id, plan_id, lookup_key, amount, currency, type, recurring_interval, stripe_price_id, "
    "active, sync_generation, synced_generation, per_seat"
)


@dataclass(frozen=True, slots=True)
class Price:
    id: uuid.UUID
    plan_id: uuid.UUID
    lookup_key: str
    amount: int
    currency: str
    type: str
    recurring_interval: str | None
    stripe_price_id: str | None
    active: bool
    sync_generation: int
    synced_generation: int
    per_seat: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    price_id: uuid.UUID
    feature_id: uuid.UUID
    amount: int


def _from_row(row: asyncpg.Record) -> Price:
    return Price(**dict(row.items()))


async def select_prices(conn: Executor, *, active_only: bool = False) -> list[Price]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM prices "  # noqa: S608 - constant column list
        "WHERE active OR NOT $1 ORDER BY lookup_key, created_at",
        active_only,
    )
    return [_from_row(row) for row in rows]


async def insert_price(
    conn: Executor,
    *,
    plan_id: uuid.UUID,
    lookup_key: str,
    amount: int,
    currency: str,
    type: str,
    recurring_interval: str | None,
    per_seat: bool = False,
) -> Price:
    row = await conn.fetchrow(
        f"""
        INSERT INTO prices (plan_id, lookup_key, amount, currency, type, recurring_interval,
                            per_seat)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column list
        plan_id,
        lookup_key,
        amount,
        currency,
        type,
        recurring_interval,
        per_seat,
    )
    assert row is not None
    return _from_row(row)


async def archive_price(conn: Executor, price_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE prices SET active = false, sync_generation = sync_generation + 1 "
        "WHERE id = $1 AND active",
        price_id,
    )


async def set_per_seat(conn: Executor, price_id: uuid.UUID, per_seat: bool) -> None:
    """Whether the price sells seats: ours alone (Stripe bills any quantity the same way)."""
    await conn.execute("UPDATE prices SET per_seat = $2 WHERE id = $1", price_id, per_seat)


async def mark_price_for_sync(conn: Executor, price_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE prices SET sync_generation = sync_generation + 1 WHERE id = $1", price_id
    )


async def select_prices_pending_sync(conn: Executor) -> list[Price]:
    """Pending prices, live ones first so new prices take their lookup keys before archiving."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM prices WHERE sync_generation > synced_generation "  # noqa: S608
        "ORDER BY active DESC, created_at"
    )
    return [_from_row(row) for row in rows]


async def set_stripe_price_id(conn: Executor, price_id: uuid.UUID, stripe_price_id: str) -> None:
    await conn.execute(
        "UPDATE prices SET stripe_price_id = $2 WHERE id = $1", price_id, stripe_price_id
    )


async def mark_price_synced(conn: Executor, price_id: uuid.UUID, generation: int) -> None:
    await conn.execute(
        "UPDATE prices SET synced_generation = greatest(synced_generation, $2) WHERE id = $1",
        price_id,
        generation,
    )


async def select_price_by_stripe_id(conn: Executor, stripe_price_id: str) -> Price | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM prices WHERE stripe_price_id = $1",  # noqa: S608
        stripe_price_id,
    )
    return None if row is None else _from_row(row)


async def select_grants(conn: Executor) -> list[Grant]:
    rows = await conn.fetch("SELECT price_id, feature_id, amount FROM price_grants")
    return [Grant(**dict(row.items())) for row in rows]


async def replace_grants(conn: Executor, price_id: uuid.UUID, grants: dict[uuid.UUID, int]) -> None:
    """Make the price's grants exactly `grants` (feature id → units)."""
    await conn.execute(
        "DELETE FROM price_grants WHERE price_id = $1 AND NOT (feature_id = ANY($2::uuid[]))",
        price_id,
        list(grants),
    )
    await conn.executemany(
        """
        INSERT INTO price_grants (price_id, feature_id, amount) VALUES ($1, $2, $3)
        ON CONFLICT (price_id, feature_id) DO UPDATE SET amount = EXCLUDED.amount
        WHERE price_grants.amount IS DISTINCT FROM EXCLUDED.amount
        """,
        [(price_id, feature_id, amount) for feature_id, amount in grants.items()],
    )


async def select_live_price(conn: Executor, lookup_key: str) -> tuple[Price, int] | None:
    """The active price with this lookup key and its plan's trial days, if its plan is live."""
    row = await conn.fetchrow(
        f"""
        SELECT {", ".join(f"prices.{c.strip()}" for c in _COLUMNS.split(","))},
               plans.trial_days AS plan_trial_days
        FROM prices JOIN plans ON plans.id = prices.plan_id
        WHERE prices.lookup_key = $1 AND prices.active AND plans.active
        """,  # noqa: S608 - constant column list
        lookup_key,
    )
    if row is None:
        return None
    fields = dict(row.items())
    trial_days: int = fields.pop("plan_trial_days")
    return Price(**fields), trial_days


async def select_price(conn: Executor, price_id: uuid.UUID) -> Price | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM prices WHERE id = $1", price_id)  # noqa: S608
    return None if row is None else _from_row(row)


async def select_price_grants(conn: Executor, price_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """Feature id → units one purchase of the price adds to the buyer's balance."""
    rows = await conn.fetch(
        "SELECT feature_id, amount FROM price_grants WHERE price_id = $1", price_id
    )
    return {row["feature_id"]: row["amount"] for row in rows}
