"""What the service answers, as frozen dataclasses, and how each is read from JSON.

Readers take only the fields they know, so a service that adds fields never breaks an older
client; timestamps become aware datetimes and money-like decimals become `Decimal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

Json = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The cheapest plan (and its price's lookup key) that would allow a denied call."""

    plan: str
    price: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """May the customer use `amount` of the feature now (`check`)."""

    allowed: bool
    feature: str
    used: int
    limit: int | None
    remaining: int | None
    soft_limit_reached: bool
    resets_at: datetime | None
    reason: str | None = None
    upgrade: Upgrade | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracked(Decision):
    """The decision of a `track`, whether it was counted, and the key it was sent with."""

    recorded: bool
    overage: bool = False
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entitlement:
    """One feature as the customer may use it now."""

    feature: str
    kind: str
    enabled: bool
    unlimited: bool
    limit: int | None
    source: str = "plan"  # "override": the customer's own limit, set by an operator
    soft_limit: int | None
    used: int | None
    remaining: int | None
    credits: int | None  # bought, and granted until they expire
    cost: Decimal | None
    reset: str | None
    period_start: datetime | None
    resets_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Entitlements:
    """Every feature of the customer's plan; `get(feature)` finds one."""

    customer_id: str
    plan: str | None
    subscription_status: str | None
    features: tuple[Entitlement, ...]

    def get(self, feature: str) -> Entitlement | None:
        return next((e for e in self.features if e.feature == feature), None)

    def allows(self, feature: str) -> bool:
        """Enabled, and with allowance left (or unlimited, or not metered)."""
        found = self.get(feature)
        if found is None or not found.enabled:
            return False
        return found.remaining is None or found.remaining > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageBucket:
    feature: str
    period_start: datetime
    period_end: datetime | None
    used: int
    cost: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageHistory:
    """Usage per feature and bucket; `start` and `end` are what the service counted."""

    customer_id: str
    granularity: str
    start: datetime
    end: datetime
    data: tuple[UsageBucket, ...]


@dataclass(frozen=True, slots=True)
class PlanRef:
    key: str
    name: str


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    price: str | None
    quantity: int | None
    metered: bool


@dataclass(frozen=True, slots=True)
class ScheduledChange:
    """A downgrade waiting for the end of the period."""

    price: str
    effective_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    status: str
    plan: str | None
    price: str | None
    quantity: int
    items: tuple[SubscriptionItem, ...]
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    cancellation_pending: bool
    canceled_at: datetime | None
    trial_end: datetime | None
    scheduled_change: ScheduledChange | None
    # The subscription in Stripe (`sub_…`), for finding it in Stripe's dashboard.
    stripe_subscription_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanChange:
    """`upgrade` or `downgrade`, effective `now` or at `period_end`, and the result."""

    direction: str
    effective: str
    subscription: Subscription


@dataclass(frozen=True, slots=True, kw_only=True)
class Customer:
    customer_id: str
    email: str | None
    name: str | None
    metadata: dict[str, str] = field(hash=False)
    plan: PlanRef | None
    subscription: Subscription | None
    created_at: datetime
    # The customer in Stripe (`cus_…`); None until their first checkout.
    stripe_customer_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutSession:
    """Send the customer to `url`."""

    id: str
    url: str | None
    mode: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PortalSession:
    url: str


@dataclass(frozen=True, slots=True)
class CustomerToken:
    """A short-lived token that reads only this customer's entitlements (for a front end)."""

    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    lookup_key: str
    amount: int
    currency: str
    type: str
    interval: str | None
    grants: dict[str, int] = field(hash=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanFeature:
    feature: str
    name: str
    kind: str
    unit: str | None
    enabled: bool
    unlimited: bool
    limit: int | None
    soft_limit: int | None
    reset: str | None
    overage: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    key: str
    name: str
    description: str
    default: bool
    active: bool
    trial_days: int
    display_order: int
    prices: tuple[Price, ...]
    features: tuple[PlanFeature, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: its items and where the next page starts (None on the last)."""

    data: tuple[T, ...]
    next_cursor: str | None


def moment(value: Any) -> datetime:
    return datetime.fromisoformat(value)


def maybe_moment(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def maybe_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def decision(body: Json) -> Decision:
    return Decision(**_decision_fields(body))


def tracked(body: Json, idempotency_key: str) -> Tracked:
    return Tracked(
        **_decision_fields(body),
        recorded=body["recorded"],
        overage=body.get("overage", False),
        idempotency_key=idempotency_key,
    )


def _decision_fields(body: Json) -> Json:
    upgrade = body.get("upgrade")
    return {
        "allowed": body["allowed"],
        "feature": body["feature"],
        "used": body["used"],
        "limit": body["limit"],
        "remaining": body["remaining"],
        "soft_limit_reached": body["soft_limit_reached"],
        "resets_at": maybe_moment(body["resets_at"]),
        "reason": body.get("reason"),
        "upgrade": Upgrade(upgrade["plan"], upgrade["price"]) if upgrade else None,
    }


def entitlements(body: Json) -> Entitlements:
    return Entitlements(
        customer_id=body["customer_id"],
        plan=body["plan"],
        subscription_status=body["subscription_status"],
        features=tuple(
            Entitlement(
                feature=f["feature"],
                kind=f["kind"],
                enabled=f["enabled"],
                unlimited=f["unlimited"],
                limit=f["limit"],
                source=f.get("source", "plan"),
                soft_limit=f["soft_limit"],
                used=f["used"],
                remaining=f["remaining"],
                credits=f["credits"],
                cost=maybe_decimal(f["cost"]),
                reset=f["reset"],
                period_start=maybe_moment(f["period_start"]),
                resets_at=maybe_moment(f["resets_at"]),
            )
            for f in body["features"]
        ),
    )


def usage_history(body: Json) -> UsageHistory:
    return UsageHistory(
        customer_id=body["customer_id"],
        granularity=body["granularity"],
        start=moment(body["from"]),
        end=moment(body["to"]),
        data=tuple(
            UsageBucket(
                feature=row["feature"],
                period_start=moment(row["period_start"]),
                period_end=maybe_moment(row["period_end"]),
                used=row["used"],
                cost=Decimal(row["cost"]),
            )
            for row in body["data"]
        ),
    )


def subscription(body: Json) -> Subscription:
    scheduled = body["scheduled_change"]
    return Subscription(
        status=body["status"],
        plan=body["plan"],
        price=body["price"],
        quantity=body["quantity"],
        items=tuple(
            SubscriptionItem(i["price"], i["quantity"], i["metered"]) for i in body["items"]
        ),
        current_period_start=maybe_moment(body["current_period_start"]),
        current_period_end=maybe_moment(body["current_period_end"]),
        cancel_at_period_end=body["cancel_at_period_end"],
        cancel_at=maybe_moment(body["cancel_at"]),
        cancellation_pending=body["cancellation_pending"],
        canceled_at=maybe_moment(body["canceled_at"]),
        trial_end=maybe_moment(body["trial_end"]),
        scheduled_change=(
            ScheduledChange(scheduled["price"], maybe_moment(scheduled["effective_at"]))
            if scheduled
            else None
        ),
        stripe_subscription_id=body.get("stripe_subscription_id"),
    )


def plan_change(body: Json) -> PlanChange:
    change = body["change"]
    return PlanChange(
        direction=change["direction"],
        effective=change["effective"],
        subscription=subscription(body["subscription"]),
    )


def customer(body: Json) -> Customer:
    plan = body["plan"]
    sub = body["subscription"]
    return Customer(
        customer_id=body["customer_id"],
        email=body["email"],
        name=body["name"],
        metadata=dict(body["metadata"]),
        plan=PlanRef(plan["key"], plan["name"]) if plan else None,
        subscription=subscription(sub) if sub else None,
        created_at=moment(body["created_at"]),
        stripe_customer_id=body.get("stripe_customer_id"),
    )


def checkout_session(body: Json) -> CheckoutSession:
    return CheckoutSession(
        id=body["id"], url=body["url"], mode=body["mode"], expires_at=moment(body["expires_at"])
    )


def portal_session(body: Json) -> PortalSession:
    return PortalSession(body["url"])


def customer_token(body: Json) -> CustomerToken:
    return CustomerToken(body["token"], moment(body["expires_at"]))


def page(body: Json, item: Callable[[Json], T]) -> Page[T]:
    return Page(
        tuple(item(i) for i in body["data"]), body["next_cursor"] if body["has_more"] else None
    )


def plan(body: Json) -> Plan:
    return Plan(
        key=body["key"],
        name=body["name"],
        description=body["description"],
        default=body["default"],
        active=body["active"],
        trial_days=body["trial_days"],
        display_order=body["display_order"],
        prices=tuple(
            Price(
                lookup_key=p["lookup_key"],
                amount=p["amount"],
                currency=p["currency"],
                type=p["type"],
                interval=p["interval"],
                grants=dict(p["grants"]),
            )
            for p in body["prices"]
        ),
        features=tuple(
            PlanFeature(
                feature=f["feature"],
                name=f["name"],
                kind=f["kind"],
                unit=f["unit"],
                enabled=f["enabled"],
                unlimited=f["unlimited"],
                limit=f["limit"],
                soft_limit=f["soft_limit"],
                reset=f["reset"],
                overage=f["overage"],
            )
            for f in body["features"]
        ),
    )
