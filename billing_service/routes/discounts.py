"""Discount routes (admin scope): coupons and the promotion codes customers type at Checkout."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.db.discounts import Coupon, PromotionCode
from billing_service.routes._http import JSONResponse, Timestamp, parse_json
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services import discounts
from billing_service.services.api_keys import Scope
from billing_service.services.discounts import CouponRequest
from billing_service.state import app_state, lag_tolerant
from billing_service.stripe_gateway import require_stripe


class CreateCoupon(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,63}$")
    name: str | None = Field(default=None, min_length=1, max_length=40)
    percent_off: Decimal | None = Field(default=None, gt=0, le=100, decimal_places=2)
    amount_off: int | None = Field(default=None, ge=1, le=99_999_999)
    currency: str | None = Field(default=None, pattern=r"^[a-z]{3}$")
    duration: Literal["once", "repeating", "forever"] = "once"
    duration_in_months: int | None = Field(default=None, ge=1, le=120)

    @model_validator(mode="after")
    def _one_kind_of_discount(self) -> Self:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError("send exactly one of percent_off and amount_off")
        if (self.amount_off is None) != (self.currency is None):
            raise ValueError("amount_off needs a currency, and only amount_off takes one")
        if (self.duration == "repeating") != (self.duration_in_months is not None):
            raise ValueError("duration_in_months goes with duration: repeating, and only it")
        return self


class CreatePromotionCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[A-Za-z0-9-]{1,200}$")
    coupon: str = Field(min_length=1, max_length=63)
    max_redemptions: int | None = Field(default=None, ge=1, le=2**31 - 1)
    expires_at: Timestamp | None = None


def serialize_coupon(coupon: Coupon) -> dict[str, object]:
    return {
        "id": coupon.key,
        "name": coupon.name,
        "percent_off": None if coupon.percent_off is None else float(coupon.percent_off),
        "amount_off": coupon.amount_off,
        "currency": coupon.currency,
        "duration": coupon.duration,
        "duration_in_months": coupon.duration_in_months,
        "stripe_coupon_id": coupon.stripe_coupon_id,
        "created_at": coupon.created_at,
    }


def serialize_promotion_code(code: PromotionCode) -> dict[str, object]:
    return {
        "code": code.code,
        "coupon": code.coupon_key,
        "max_redemptions": code.max_redemptions,
        "expires_at": code.expires_at,
        "stripe_promotion_code_id": code.stripe_promotion_code_id,
        "created_at": code.created_at,
    }


@requires(Scope.ADMIN)
async def create_coupon(request: Request) -> Response:
    body = await parse_json(request, CreateCoupon)
    state = app_state(request)
    coupon, created = await discounts.create_coupon(
        state["pool"],
        require_stripe(state["stripe"]),
        CouponRequest(
            key=body.id, name=body.name, percent_off=body.percent_off,
            amount_off=body.amount_off, currency=body.currency, duration=body.duration,
            duration_in_months=body.duration_in_months,
        ),
    )  # fmt: skip
    return JSONResponse(serialize_coupon(coupon), status_code=201 if created else 200)


@requires(Scope.ADMIN)
async def list_coupons(request: Request) -> Response:
    """Coupons oldest first, a page at a time."""
    page = page_request(request)
    found = await lag_tolerant(
        request,
        lambda pool: discounts.list_coupons(pool, after=after(page), limit=page.limit + 1),
    )
    return JSONResponse(page_body(found, page, serialize=serialize_coupon, cursor_of=time_cursor))


@requires(Scope.ADMIN)
async def create_promotion_code(request: Request) -> Response:
    body = await parse_json(request, CreatePromotionCode)
    state = app_state(request)
    code, created = await discounts.create_promotion_code(
        state["pool"], require_stripe(state["stripe"]), code=body.code, coupon_key=body.coupon,
        max_redemptions=body.max_redemptions, expires_at=body.expires_at,
    )  # fmt: skip
    return JSONResponse(serialize_promotion_code(code), status_code=201 if created else 200)


@requires(Scope.ADMIN)
async def list_promotion_codes(request: Request) -> Response:
    """Promotion codes oldest first, a page at a time."""
    page = page_request(request)
    found = await lag_tolerant(
        request,
        lambda pool: discounts.list_promotion_codes(pool, after=after(page), limit=page.limit + 1),
    )
    return JSONResponse(
        page_body(found, page, serialize=serialize_promotion_code, cursor_of=time_cursor)
    )


routes = [
    Route("/v1/coupons", create_coupon, methods=["POST"]),
    Route("/v1/coupons", list_coupons, methods=["GET"]),
    Route("/v1/promotion-codes", create_promotion_code, methods=["POST"]),
    Route("/v1/promotion-codes", list_promotion_codes, methods=["GET"]),
]
