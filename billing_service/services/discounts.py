"""Coupons and promotion codes, created through the service and synced to Stripe.

Each is recorded first, then created in Stripe outside any transaction with an idempotency key
per row (`attempt_key`), then its Stripe id is recorded. A create that failed half-way is
finished by the same request again; the same key or code with other terms is a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing_service.db import discounts as db
from billing_service.db.discounts import Coupon, PromotionCode
from billing_service.db.pages import After
from billing_service.errors import Conflict, FieldError, ValidationFailed
from billing_service.services.stripe_keys import attempt_key
from billing_service.stripe_gateway import StripeGateway


@dataclass(frozen=True, slots=True)
class CouponRequest:
    key: str
    name: str | None
    percent_off: Decimal | None
    amount_off: int | None
    currency: str | None
    duration: str
    duration_in_months: int | None

    def terms(self) -> tuple[object, ...]:
        return (
            self.name,
            self.percent_off,
            self.amount_off,
            self.currency,
            self.duration,
            self.duration_in_months,
        )


async def create_coupon(
    pool: asyncpg.Pool, gateway: StripeGateway, request: CouponRequest
) -> tuple[Coupon, bool]:
    """The coupon, synced to Stripe, and whether this call created it."""
    coupon = await db.insert_coupon(
        pool, key=request.key, name=request.name, percent_off=request.percent_off,
        amount_off=request.amount_off, currency=request.currency, duration=request.duration,
        duration_in_months=request.duration_in_months,
    )  # fmt: skip
    created = coupon is not None
    if coupon is None:
        coupon = await db.select_coupon(pool, request.key)
        assert coupon is not None  # coupons are never deleted
        if coupon.terms() != request.terms():
            raise Conflict(f"Coupon '{request.key}' exists with other terms.")
    if coupon.stripe_coupon_id is None:
        async with attempt_key(pool, f"coupon:{coupon.id}") as key:
            stripe_id = await gateway.create_coupon(
                coupon_id=coupon.key, name=coupon.name, percent_off=coupon.percent_off,
                amount_off=coupon.amount_off, currency=coupon.currency,
                duration=coupon.duration, duration_in_months=coupon.duration_in_months,
                idempotency_key=key,
            )  # fmt: skip
        coupon = await db.set_stripe_coupon_id(pool, coupon.id, stripe_id)
    return coupon, created


async def list_coupons(pool: asyncpg.Pool, *, after: After | None, limit: int) -> list[Coupon]:
    return await db.select_coupons(pool, after=after, limit=limit)


async def create_promotion_code(
    pool: asyncpg.Pool, gateway: StripeGateway, *, code: str, coupon_key: str,
    max_redemptions: int | None, expires_at: datetime | None,
) -> tuple[PromotionCode, bool]:  # fmt: skip
    """The code, synced to Stripe, and whether this call created it; its coupon must be in
    Stripe already."""
    coupon = await db.select_coupon(pool, coupon_key)
    if coupon is None or coupon.stripe_coupon_id is None:
        raise ValidationFailed([FieldError("coupon", f"no coupon has key '{coupon_key}'")])
    created = await db.insert_promotion_code(
        pool, code=code, coupon_id=coupon.id, max_redemptions=max_redemptions,
        expires_at=expires_at,
    )  # fmt: skip
    found = await db.select_promotion_code(pool, code)
    assert found is not None  # promotion codes are never deleted
    terms = (found.code, found.coupon_key, found.max_redemptions, found.expires_at)
    if not created and terms != (code, coupon_key, max_redemptions, expires_at):
        raise Conflict(f"Promotion code '{found.code}' exists with other terms.")
    if found.stripe_promotion_code_id is None:
        async with attempt_key(pool, f"promotion_code:{found.id}") as key:
            stripe_id = await gateway.create_promotion_code(
                code=found.code, coupon=coupon.stripe_coupon_id,
                max_redemptions=found.max_redemptions, expires_at=found.expires_at,
                idempotency_key=key,
            )  # fmt: skip
        await db.set_stripe_promotion_code_id(pool, found.id, stripe_id)
        found = await db.select_promotion_code(pool, code)
        assert found is not None
    return found, created


async def list_promotion_codes(
    pool: asyncpg.Pool, *, after: After | None, limit: int
) -> list[PromotionCode]:
    return await db.select_promotion_codes(pool, after=after, limit=limit)
