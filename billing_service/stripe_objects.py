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


# Where Stripe hosts the pages a customer may be sent to (invoices, the portal, payment pages).
STRIPE_HOSTED_PREFIXES = (
    "https://invoice.stripe.com/",
    "https://billing.stripe.com/",
    "https://pay.stripe.com/",
)


def stripe_hosted_url(value: object) -> str | None:
    """`value` if it is a page Stripe hosts, else None: only those may reach emails and apps."""
    if isinstance(value, str) and value.startswith(STRIPE_HOSTED_PREFIXES):
        return value
    return None


def _id(value: object) -> str | None:
    """An expandable field: either an id or the expanded object carrying one."""
    if isinstance(value, Mapping):
        return str(value["id"])
    return value if isinstance(value, str) else None


def _discount_ids(value: object) -> tuple[str, ...]:
    """Discount ids from a list of ids or expanded discounts."""
    if not isinstance(value, list):
        return ()
    return tuple(found for found in map(_id, value) if found is not None)


@dataclass(frozen=True, slots=True)
class StripeSubscriptionItem:
    """One item of a subscription: a price, its quantity (None for metered prices, which are
    billed on usage) and, in current API versions, its own billing period."""

    id: str
    price_id: str
    quantity: int | None
    metered: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    discounts: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        """The item as the mirror stores it (epoch seconds, like Stripe)."""
        return {
            "id": self.id,
            "price": self.price_id,
            "quantity": self.quantity,
            "metered": self.metered,
            "current_period_start": _epoch(self.current_period_start),
            "current_period_end": _epoch(self.current_period_end),
        }


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def parse_subscription_item(
    item: Mapping[str, Any], subscription: Mapping[str, Any]
) -> StripeSubscriptionItem:
    """An item; the period falls back to the subscription's (older API versions)."""
    price = item["price"]
    recurring = price.get("recurring") if isinstance(price, Mapping) else None
    metered = bool(recurring and recurring.get("usage_type") == "metered")
    return StripeSubscriptionItem(
        id=item["id"],
        price_id=_id(price) or "",
        quantity=None if metered else (item.get("quantity") or 1),
        metered=metered,
        current_period_start=timestamp(
            item.get("current_period_start", subscription.get("current_period_start"))
        ),
        current_period_end=timestamp(
            item.get("current_period_end", subscription.get("current_period_end"))
        ),
        discounts=_discount_ids(item.get("discounts")),
    )


def _unpaid_since(status: str, invoice: object) -> datetime | None:
    """When Stripe made the subscription past due, read from its latest invoice when it is
    expanded and still open: a charged invoice is first attempted when it is finalized, a sent
    one is overdue from its due date. None when Stripe does not tell."""
    if status != "past_due" or not isinstance(invoice, Mapping) or invoice.get("status") != "open":
        return None
    if invoice.get("collection_method") == "send_invoice":
        return timestamp(invoice.get("due_date"))
    if not invoice.get("attempted"):
        return None
    transitions = invoice.get("status_transitions") or {}
    return timestamp(transitions.get("finalized_at"))


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    """A subscription with every item; which item carries the plan is the catalog's call."""

    id: str
    customer: str
    status: str
    currency: str | None
    items: tuple[StripeSubscriptionItem, ...]
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    trial_end: datetime | None
    schedule_id: str | None
    discounts: tuple[str, ...]
    past_due_since: datetime | None
    created: datetime

    def item(self, item_id: str | None) -> StripeSubscriptionItem | None:
        return next((item for item in self.items if item.id == item_id), None)


def parse_subscription(data: Mapping[str, Any]) -> StripeSubscription:
    """Every item, in Stripe's order; `past_due_since` only when `latest_invoice` is expanded."""
    return StripeSubscription(
        id=data["id"],
        customer=_id(data["customer"]) or "",
        status=data["status"],
        currency=data.get("currency"),
        items=tuple(parse_subscription_item(item, data) for item in data["items"]["data"]),
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        cancel_at=timestamp(data.get("cancel_at")),
        canceled_at=timestamp(data.get("canceled_at")),
        ended_at=timestamp(data.get("ended_at")),
        trial_end=timestamp(data.get("trial_end")),
        schedule_id=_id(data.get("schedule")),
        discounts=_discount_ids(data.get("discounts")),
        past_due_since=_unpaid_since(data["status"], data.get("latest_invoice")),
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
class StripeSchedule:
    """A subscription schedule: its id and the start of the phase in effect now."""

    id: str
    current_phase_start: int


def parse_schedule(data: Mapping[str, Any]) -> StripeSchedule:
    """`current_phase` is set while the schedule is active; else the first phase's start."""
    current = data.get("current_phase") or data["phases"][0]
    return StripeSchedule(id=data["id"], current_phase_start=current["start_date"])
