"""Stripe objects as our own dataclasses, parsed from plain mappings.

The gateway hands over `StripeObject.to_dict()` and webhooks hand over event JSON; both are parsed
here, so every part of the service reads one shape. Only the fields we use are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def timestamp(value: object) -> datetime | None:
    """Stripe's epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) else None


def _id(value: object) -> str | None:
    """An expandable field: either an id or the expanded object carrying one."""
    if isinstance(value, Mapping):
        return str(value["id"])
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    id: str
    customer: str
    status: str
    price_id: str
    item_id: str | None
    quantity: int
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    trial_end: datetime | None
    schedule_id: str | None
    created: datetime


def parse_subscription(data: Mapping[str, Any]) -> StripeSubscription:
    """The first item carries the price and, in current API versions, the billing period."""
    item = data["items"]["data"][0]
    return StripeSubscription(
        id=data["id"],
        customer=_id(data["customer"]) or "",
        status=data["status"],
        price_id=_id(item["price"]) or "",
        item_id=item.get("id"),
        quantity=item.get("quantity") or 1,
        current_period_start=timestamp(
            item.get("current_period_start", data.get("current_period_start"))
        ),
        current_period_end=timestamp(
            item.get("current_period_end", data.get("current_period_end"))
        ),
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        cancel_at=timestamp(data.get("cancel_at")),
        canceled_at=timestamp(data.get("canceled_at")),
        ended_at=timestamp(data.get("ended_at")),
        trial_end=timestamp(data.get("trial_end")),
        schedule_id=_id(data.get("schedule")),
        created=timestamp(data.get("created")) or datetime.now(UTC),
    )


@dataclass(frozen=True, slots=True)
class StripeCheckoutSession:
    id: str
    url: str | None
    mode: str
    status: str
    payment_status: str
    customer: str | None
    subscription: str | None
    payment_intent: str | None
    expires_at: datetime
    amount_total: int | None
    currency: str | None
    customer_email: str | None
    metadata: dict[str, str]


def parse_checkout_session(data: Mapping[str, Any]) -> StripeCheckoutSession:
    details = data.get("customer_details") or {}
    return StripeCheckoutSession(
        id=data["id"],
        url=data.get("url"),
        mode=data["mode"],
        status=data.get("status") or "open",
        payment_status=data.get("payment_status") or "unpaid",
        customer=_id(data.get("customer")),
        subscription=_id(data.get("subscription")),
        payment_intent=_id(data.get("payment_intent")),
        expires_at=timestamp(data.get("expires_at")) or datetime.now(UTC),
        amount_total=data.get("amount_total"),
        currency=data.get("currency"),
        customer_email=details.get("email") or data.get("customer_email"),
        metadata=dict(data.get("metadata") or {}),
    )


@dataclass(frozen=True, slots=True)
class StripeSchedulePhase:
    start_date: int
    end_date: int | None


def first_schedule_phase(data: Mapping[str, Any]) -> StripeSchedulePhase:
    phase = data["phases"][0]
    return StripeSchedulePhase(start_date=phase["start_date"], end_date=phase.get("end_date"))
