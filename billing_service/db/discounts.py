"""SQL for coupons and promotion codes (migration 0023)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing_service.db.pages import OLDEST_FIRST, After
from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Coupon:
    id: uuid.UUID
    key: str
    name: str | None
    percent_off: Decimal | None
    amount_off: int | None
    currency: str | None
    duration: str
    duration_in_months: int | None
    stripe_coupon_id: str | None
    created_at: datetime

    def terms(self) -> tuple[object, ...]:
        """What a repeated create must match."""
        return (
            self.name,
            self.percent_off,
            self.amount_off,
            self.currency,
            self.duration,
            self.duration_in_months,
        )


@dataclass(frozen=True, slots=True)
class PromotionCode:
    id: uuid.UUID
    code: str
    coupon_key: str
    max_redemptions: int | None
    expires_at: datetime | None
    stripe_promotion_code_id: str | None
    created_at: datetime


_COUPON = (
    "id, key, name, percent_off, amount_off, currency, duration, duration_in_months, "
    "stripe_coupon_id, created_at"
)
_CODE = (
    "p.id, p.code, c.key AS coupon_key, p.max_redemptions, p.expires_at, "
    "p.stripe_promotion_code_id, p.created_at"
)


def _coupon(row: asyncpg.Record) -> Coupon:
    return Coupon(**dict(row.items()))


def _code(row: asyncpg.Record) -> PromotionCode:
    return PromotionCode(**dict(row.items()))


async def insert_coupon(
    conn: Executor, *, key: str, name: str | None, percent_off: Decimal | None,
    amount_off: int | None, currency: str | None, duration: str,
    duration_in_months: int | None,
) -> Coupon | None:  # fmt: skip
    """The new coupon, or None when one with the key exists."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO coupons (key, name, percent_off, amount_off, currency, duration,
                             duration_in_months)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (key) DO NOTHING
        RETURNING {_COUPON}
        """,  # noqa: S608 - constant column list
        key,
        name,
        percent_off,
        amount_off,
        currency,
        duration,
        duration_in_months,
    )
    return None if row is None else _coupon(row)


async def select_coupon(conn: Executor, key: str) -> Coupon | None:
    row = await conn.fetchrow(f"SELECT {_COUPON} FROM coupons WHERE key = $1", key)  # noqa: S608
    return None if row is None else _coupon(row)


async def select_coupons(conn: Executor, *, after: After | None, limit: int) -> list[Coupon]:
    """Coupons oldest first, after `after` (the first page when None)."""
    start = after or OLDEST_FIRST
    rows = await conn.fetch(
        f"""
        SELECT {_COUPON} FROM coupons WHERE (created_at, id) > ($1, $2)
        ORDER BY created_at, id LIMIT $3
        """,  # noqa: S608 - constant column list
        start.created_at,
        start.id,
        limit,
    )
    return [_coupon(row) for row in rows]


async def set_stripe_coupon_id(conn: Executor, coupon_id: uuid.UUID, stripe_id: str) -> Coupon:
    row = await conn.fetchrow(
        f"UPDATE coupons SET stripe_coupon_id = $2 WHERE id = $1 RETURNING {_COUPON}",  # noqa: S608
        coupon_id,
        stripe_id,
    )
    assert row is not None
    return _coupon(row)


async def insert_promotion_code(
    conn: Executor, *, code: str, coupon_id: uuid.UUID, max_redemptions: int | None,
    expires_at: datetime | None,
) -> bool:  # fmt: skip
    """Whether the code was new (a code exists once, whatever its case)."""
    inserted = await conn.fetchval(
        """
        INSERT INTO promotion_codes (code, coupon_id, max_redemptions, expires_at)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (lower(code)) DO NOTHING
        RETURNING true
        """,
        code,
        coupon_id,
        max_redemptions,
        expires_at,
    )
    return bool(inserted)


async def select_promotion_code(conn: Executor, code: str) -> PromotionCode | None:
    """The code, whatever case it is typed in."""
    row = await conn.fetchrow(
        f"""
        SELECT {_CODE} FROM promotion_codes p JOIN coupons c ON c.id = p.coupon_id
        WHERE lower(p.code) = lower($1)
        """,  # noqa: S608 - constant column list
        code,
    )
    return None if row is None else _code(row)


async def select_promotion_codes(
    conn: Executor, *, after: After | None, limit: int
) -> list[PromotionCode]:
    """Promotion codes oldest first, after `after` (the first page when None)."""
    start = after or OLDEST_FIRST
    rows = await conn.fetch(
        f"""
        SELECT {_CODE} FROM promotion_codes p JOIN coupons c ON c.id = p.coupon_id
        WHERE (p.created_at, p.id) > ($1, $2)
        ORDER BY p.created_at, p.id LIMIT $3
        """,  # noqa: S608 - constant column list
        start.created_at,
        start.id,
        limit,
    )
    return [_code(row) for row in rows]


async def set_stripe_promotion_code_id(
    conn: Executor, promotion_code_id: uuid.UUID, stripe_id: str
) -> None:
    await conn.execute(
        "UPDATE promotion_codes SET stripe_promotion_code_id = $2 WHERE id = $1",
        promotion_code_id,
        stripe_id,
    )
