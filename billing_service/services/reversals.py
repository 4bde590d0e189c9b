"""Refunds and disputes: what Stripe takes back from a paid order, and who hears of it.

Like every handler, these act on the charge and dispute fetched from Stripe, never on the event's
payload. A full refund or a lost dispute reverses the order and takes back its unspent credits
(`db.orders.claw_back_credits`); every dispute of our customers' payments is announced.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from billing_service.db import checkout_sessions, orders, outbox
from billing_service.db import customers as customers_db
from billing_service.db.pool import Connection
from billing_service.stripe_objects import timestamp

if TYPE_CHECKING:
    from billing_service.services.stripe_events import EventContext

DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)
# Dispute statuses that wait for the seller's evidence, and the ones that end a dispute.
DISPUTE_OPENED = frozenset({"warning_needs_response", "needs_response"})
DISPUTE_CLOSED = frozenset({"won", "lost", "warning_closed", "prevented"})


class OrderNotRecordedYet(Exception):
    """A refund or dispute of a checkout payment whose order is not recorded yet: the event is
    retried (with backoff) until the checkout's own event has recorded it."""


async def _order_paid_by(ctx: EventContext, payment_intent: object) -> orders.Order | None:
    """The order a payment paid for; None when it paid for no order of ours (a subscription
    invoice, another integration's payment)."""
    if not isinstance(payment_intent, str):
        return None
    order = await orders.select_order_by_payment_intent(ctx.conn, payment_intent)
    if order is not None:
        return order
    session_id = await ctx.gateway.find_checkout_session(payment_intent)
    if session_id is not None and await checkout_sessions.select_checkout_session(
        ctx.conn, session_id
    ):
        raise OrderNotRecordedYet(f"no order for checkout session {session_id} yet")
    return None


async def handle_charge_refunded(ctx: EventContext) -> None:
    """A fully refunded charge refunds its order and takes back the order's unspent credits.

    A partial refund changes nothing: Stripe does not say which units it pays back, and sellers
    use it as a goodwill gesture; the credits go once the refunds add up to the whole charge.
    """
    charge = await ctx.gateway.retrieve_object("charge", str(ctx.object.get("id")))
    order = await _order_paid_by(ctx, charge.get("payment_intent"))

    async def refund(conn: Connection) -> None:
        if order is not None and charge.get("refunded") is True:
            await orders.mark_reversed(conn, order.id, "refunded")
            await orders.claw_back_credits(conn, order_id=order.id, reason="refund")

    await ctx.complete(refund)


async def handle_dispute(ctx: EventContext) -> None:
    """charge.dispute.*: the dispute and its charge are fetched from Stripe. Each new status
    is announced (dispute.updated; the owner is emailed when a dispute opens and when it ends);
    a lost dispute charges the order back and takes back its unspent credits."""
    dispute = await ctx.gateway.retrieve_object("dispute", str(ctx.object.get("id")))
    charge = await ctx.gateway.retrieve_object("charge", str(dispute.get("charge")))
    order = await _order_paid_by(ctx, charge.get("payment_intent"))
    stripe_customer_id = charge.get("customer")
    if order is not None:
        customer = await customers_db.select_customer_by_id(ctx.conn, order.customer_id)
    elif isinstance(stripe_customer_id, str):
        customer = await customers_db.select_customer_by_stripe_id(ctx.conn, stripe_customer_id)
    else:
        customer = None
    if customer is None:
        await ctx.complete()  # a payment of someone else's
        return
    status = str(dispute.get("status"))

    async def record(conn: Connection) -> None:
        clawbacks: list[orders.Clawback] = []
        if status == "lost" and order is not None:
            await orders.mark_reversed(conn, order.id, "charged_back")
            clawbacks = await orders.claw_back_credits(conn, order_id=order.id, reason="dispute")
        due_by = timestamp((dispute.get("evidence_details") or {}).get("due_by"))
        template = (
            "owner_dispute_opened" if status in DISPUTE_OPENED
            else "owner_dispute_closed" if status in DISPUTE_CLOSED
            else None
        )  # fmt: skip
        await outbox.emit(
            conn,
            "dispute.updated",
            {
                "customer_id": customer.external_id,
                "order_id": None if order is None else str(order.id),
                "dispute_id": dispute.get("id"),
                "status": status,
                "reason": dispute.get("reason"),
                "amount": dispute.get("amount"),
                "currency": dispute.get("currency"),
                "evidence_due_by": None if due_by is None else due_by.isoformat(),
                "credits_clawed_back": [asdict(c) for c in clawbacks],
            },
            dedupe_key=f"dispute.updated:{dispute.get('id')}:{status}",
            emails=[] if template is None else [(template, None)],
        )

    await ctx.complete(record)
