"""Teams: the seats a per-seat subscription bought, changing them, and the members holding them.

Seats are the quantity of the subscription's plan item when its price is sold per seat. Adding
seats is prorated and invoiced at once, like an upgrade (a declined card changes nothing);
removing seats waits for the end of the paid period by default (a subscription schedule), or
applies now with a proration credit when `BILLING_SEAT_REDUCTION_AT=now`, and is refused below
the seats members hold. Assignments and removals of one customer take turns on the customer's
row, and a removal is written down before Stripe is asked, so no member takes a seat that is
on its way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import asyncpg

from billing_service.db import members as db
from billing_service.db import outbox, subscriptions
from billing_service.db.customers import Customer
from billing_service.db.members import Member
from billing_service.db.pool import Connection, Executor
from billing_service.db.subscriptions import Subscription
from billing_service.errors import (
    Conflict,
    FieldError,
    NoActiveSubscription,
    NoSeats,
    NotFound,
    SeatsInUse,
    SeatsTaken,
    ValidationFailed,
)
from billing_service.services.subscriptions import CHANGEABLE_STATUSES, _attempt, _key
from billing_service.stripe_gateway import StripeGateway


@dataclass(frozen=True, slots=True)
class Seats:
    """Seats bought, held by members, and what is left once removals pending take effect."""

    purchased: int
    in_use: int
    scheduled: int | None  # seats at the end of the period, when some are being removed
    max_seats: int | None

    @property
    def available(self) -> int:
        """Seats a new member may take: removals pending count already."""
        usable = min(self.purchased, self.scheduled or self.purchased)
        return max(0, usable - self.in_use)


@dataclass(frozen=True, slots=True)
class SeatChange:
    direction: Literal["add", "remove", "none"]
    effective: Literal["now", "period_end"]


def team_subscription(subscription: Subscription | None) -> Subscription | None:
    """The subscription if it sells seats (its plan item's price is per seat) and is live."""
    if subscription is None or not subscription.per_seat:
        return None
    return subscription if subscription.status in CHANGEABLE_STATUSES else None


async def seats(pool: Executor, customer: Customer) -> Seats | None:
    """The customer's seats, or None without a per-seat subscription."""
    current = team_subscription(await subscriptions.select_current_subscription(pool, customer.id))
    if current is None:
        return None
    return Seats(
        purchased=current.quantity,
        in_use=await db.count_members(pool, customer.id),
        scheduled=current.scheduled_quantity,
        max_seats=current.max_seats,
    )


async def _require_team(conn: Connection, customer: Customer) -> Seats:
    found = await seats(conn, customer)
    if found is None:
        raise NoSeats(
            f"Customer '{customer.external_id}' has no live subscription sold per seat; members "
            "need a plan with a per-seat price."
        )
    return found


async def assign_member(
    pool: asyncpg.Pool, customer: Customer, member_id: str
) -> tuple[Member, bool]:
    """Give the member a seat; returns the member and whether they are new. A member who holds
    one already keeps it; with no seat left, 409 says how many are assigned."""
    async with pool.acquire() as conn, conn.transaction():
        await db.lock_team(conn, customer.id)
        existing = await db.select_member(conn, customer.id, member_id)
        if existing is not None:
            return existing, False
        team = await _require_team(conn, customer)
        if team.available <= 0:
            raise SeatsTaken(
                f"All {team.purchased} seats of customer '{customer.external_id}' are taken"
                + (f" or being removed (down to {team.scheduled})" if team.scheduled else "")
                + "; add seats or free one first.",
                seats=team.purchased,
                assigned=team.in_use,
            )
        member = await db.insert_member(conn, customer.id, member_id)
        assert member is not None  # the team's lock is held: no one else inserted it
        if team.available == 1:  # this member took the last seat
            await outbox.emit(
                conn,
                "team.seats_full",
                {"customer_id": customer.external_id, "seats": team.purchased,
                 "assigned": team.in_use + 1},
                emails=[("owner_seats_full", None)],
            )  # fmt: skip
        return member, True


async def remove_member(pool: asyncpg.Pool, customer: Customer, member_id: str) -> None:
    """Free the member's seat; their usage this window stays counted."""
    async with pool.acquire() as conn, conn.transaction():
        await db.lock_team(conn, customer.id)
        if not await db.delete_member(conn, customer.id, member_id):
            raise NotFound(f"Customer '{customer.external_id}' has no member '{member_id}'.")


async def get_member(pool: asyncpg.Pool, customer: Customer, member_id: str) -> Member:
    member = await db.select_member(pool, customer.id, member_id)
    if member is None:
        raise NotFound(f"Customer '{customer.external_id}' has no member '{member_id}'.")
    return member


async def _seat_subscription(
    pool: asyncpg.Pool, customer: Customer, *, grace: timedelta
) -> Subscription:
    current = await subscriptions.select_current_subscription(pool, customer.id, grace=grace)
    if current is None or current.status not in CHANGEABLE_STATUSES:
        raise NoActiveSubscription(
            f"Customer '{customer.external_id}' has no active subscription; "
            "start one with POST /v1/checkout/sessions."
        )
    if not current.per_seat:
        raise NoSeats(
            f"The subscription of customer '{customer.external_id}' is not sold per seat."
        )
    return current


def _check_quantity(subscription: Subscription, quantity: int) -> None:
    if subscription.max_seats is not None and quantity > subscription.max_seats:
        raise ValidationFailed(
            [FieldError("quantity", f"must be at most {subscription.max_seats}, the plan's "
                        "max_seats")]
        )  # fmt: skip


async def _announce(
    conn: Connection, customer: Customer, before: int, after: Subscription,
    change: SeatChange,
) -> None:  # fmt: skip
    await outbox.emit(
        conn,
        "subscription.seats_changed",
        {
            "customer_id": customer.external_id,
            "previous_seats": before,
            "seats": after.quantity,
            "scheduled_seats": after.scheduled_quantity,
            "effective": change.effective,
            "effective_at": (
                after.scheduled_change_at.isoformat()
                if change.effective == "period_end" and after.scheduled_change_at
                else None
            ),
        },
    )


async def change_seats(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    customer: Customer,
    *,
    quantity: int,
    reduce_at: Literal["period_end", "now"],
    grace: timedelta,
) -> SeatChange:
    """Set the seats bought to `quantity` (see the module's docstring)."""
    subscription = await _seat_subscription(pool, customer, grace=grace)
    _check_quantity(subscription, quantity)
    assert subscription.stripe_item_id is not None
    if subscription.scheduled_price_key is not None:
        raise Conflict(
            f"A change to price '{subscription.scheduled_price_key}' is scheduled for the end of "
            "the period; change the seats once it has happened, or change the plan now."
        )
    before = subscription.quantity
    if quantity == before and subscription.scheduled_quantity is None:
        return SeatChange(direction="none", effective="now")
    if quantity >= before:
        return await _add_seats(pool, gateway, customer, subscription, quantity)
    return await _remove_seats(pool, gateway, customer, subscription, quantity, reduce_at=reduce_at)


async def _add_seats(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer, subscription: Subscription,
    quantity: int,
) -> SeatChange:  # fmt: skip
    """Prorated and invoiced at once; a pending removal is dropped with its schedule."""
    assert subscription.stripe_item_id is not None
    stripe_subscription = None
    async with _attempt(pool, subscription):
        if subscription.stripe_schedule_id is not None and subscription.scheduled_quantity:
            await gateway.release_schedule(
                subscription.stripe_schedule_id, idempotency_key=_key(subscription, "release")
            )
            await subscriptions.forget_schedule(pool, subscription.stripe_subscription_id)
        if quantity != subscription.quantity:
            stripe_subscription = await gateway.change_subscription_quantity(
                subscription.stripe_subscription_id,
                item_id=subscription.stripe_item_id,
                quantity=quantity,
                proration_behavior="always_invoice",
                idempotency_key=_key(subscription, f"seats:{quantity}"),
            )
    change = SeatChange(
        direction="add" if quantity > subscription.quantity else "none", effective="now"
    )
    async with pool.acquire() as conn, conn.transaction():
        if stripe_subscription is not None:
            await subscriptions.upsert_subscription(conn, customer.id, stripe_subscription)
        await subscriptions.set_scheduled_quantity(conn, subscription.id, None)
        updated = await subscriptions.select_current_subscription(conn, customer.id)
        assert updated is not None
        await _announce(conn, customer, subscription.quantity, updated, change)
    return change


async def _remove_seats(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer, subscription: Subscription,
    quantity: int, *, reduce_at: Literal["period_end", "now"],
) -> SeatChange:  # fmt: skip
    """Never below the seats in use: checked, and the removal written down, under the team's
    lock before Stripe is asked; undone if Stripe refuses."""
    assert subscription.stripe_item_id is not None
    async with pool.acquire() as conn, conn.transaction():
        await db.lock_team(conn, customer.id)
        assigned = await db.count_members(conn, customer.id)
        if assigned > quantity:
            raise SeatsInUse(
                f"{assigned} seats are assigned to members; free {assigned - quantity} before "
                f"going down to {quantity}.",
                assigned=assigned,
            )
        await subscriptions.set_scheduled_quantity(conn, subscription.id, quantity)
    try:
        async with _attempt(pool, subscription):
            if reduce_at == "now":
                if subscription.stripe_schedule_id is not None:
                    await gateway.release_schedule(
                        subscription.stripe_schedule_id,
                        idempotency_key=_key(subscription, "release"),
                    )
                    await subscriptions.forget_schedule(pool, subscription.stripe_subscription_id)
                stripe_subscription = await gateway.change_subscription_quantity(
                    subscription.stripe_subscription_id,
                    item_id=subscription.stripe_item_id,
                    quantity=quantity,
                    proration_behavior="create_prorations",
                    idempotency_key=_key(subscription, f"seats:{quantity}"),
                )
            else:
                schedule_id, effective_at = await gateway.schedule_price_change(
                    subscription.stripe_subscription_id,
                    item_id=subscription.stripe_item_id,
                    new_price=subscription.stripe_price_id,
                    quantity=quantity,
                    idempotency_key=_key(subscription, f"seats:{quantity}"),
                )
    except BaseException:
        await subscriptions.set_scheduled_quantity(
            pool, subscription.id, subscription.scheduled_quantity
        )
        raise
    change = SeatChange(direction="remove", effective=reduce_at)
    async with pool.acquire() as conn, conn.transaction():
        if reduce_at == "now":
            await subscriptions.upsert_subscription(conn, customer.id, stripe_subscription)
        else:
            await subscriptions.set_scheduled_seats(
                conn, subscription.stripe_subscription_id, schedule_id=schedule_id,
                effective_at=effective_at,
            )  # fmt: skip
        updated = await subscriptions.select_current_subscription(conn, customer.id)
        assert updated is not None
        await _announce(conn, customer, subscription.quantity, updated, change)
    return change
