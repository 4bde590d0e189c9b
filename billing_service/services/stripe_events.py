"""The Stripe webhook ledger: accepting signed events, and processing them exactly once in effect.

Receipt only verifies and stores: the event is committed to the ledger before Stripe gets its
2xx, and nothing waits on Stripe's API. Processing happens later, in a worker: events are
signals, Stripe is the truth, so handlers re-fetch the current object from Stripe and mirror it.
Each event's effect is written in the same transaction that marks it processed, so a duplicate,
a twin, a retry or a second worker can never apply it twice.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from billing_service.config import Settings
from billing_service.db import checkout_sessions, orders, outbox, prices, stripe_events
from billing_service.db import customers as customers_db
from billing_service.db.customers import Customer
from billing_service.db.pool import Connection, session_lock
from billing_service.db.stripe_events import StoredEvent
from billing_service.errors import InvalidWebhook, StripeNotConfigured
from billing_service.metrics import Metrics
from billing_service.services import catalog_sync, customers, invoices, reversals
from billing_service.stripe_gateway import StripeGateway
from billing_service.stripe_objects import stripe_hosted_url, timestamp
from billing_service.webhook_signature import SignatureError, verify_signature

logger = structlog.get_logger(__name__)

LEASE_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 3600.0

SUBSCRIPTION_SIGNALS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.trial_will_end",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.payment_action_required",
    }
)
# A failed invoice that is paid or voided since needs nobody's action any more.
SETTLED_INVOICES = frozenset({"paid", "void"})
CHECKOUT_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    }
)


# Receipt


async def receive_event(
    pool: asyncpg.Pool, settings: Settings, body: bytes, signature: str | None
) -> bool:
    """Verify and store one webhook; True when it is new, False for a duplicate.

    A verified event is stored whenever it can be told apart from others (it has a Stripe event
    id), even with values PostgreSQL cannot hold as they are: Stripe answers a 400 by retrying for
    days, so an event it really sent must never be refused for its content."""
    secrets = [secret.get_secret_value() for secret in settings.stripe_webhook_secrets]
    if not secrets:
        raise StripeNotConfigured(
            "Webhooks need a signing secret; set BILLING_STRIPE_WEBHOOK_SECRETS."
        )
    try:
        verify_signature(body, signature, secrets)
    except SignatureError as exc:
        logger.warning("webhook.rejected", reason=str(exc))
        raise InvalidWebhook("The Stripe-Signature header does not verify.") from None
    try:
        event = _parse_event(body)
    except InvalidWebhook as exc:
        logger.warning("webhook.rejected", reason=exc.detail)
        raise
    if event["livemode"] is not settings.stripe_livemode:
        mode = "live" if event["livemode"] else "test"
        raise InvalidWebhook(f"A {mode}-mode event does not belong to this {settings.env} service.")
    data_object = event["data"]["object"]
    api_version = event.get("api_version")
    inserted = await stripe_events.insert_event(
        pool,
        stripe_event_id=event["id"],
        type=event["type"],
        livemode=event["livemode"],
        api_version=api_version if isinstance(api_version, str) else None,
        stripe_created_at=_created_at(event),
        object_id=str(data_object["id"]) if "id" in data_object else None,
        payload=event,
    )
    logger.info(
        "webhook.received", stripe_event_id=event["id"], type=event["type"], duplicate=not inserted
    )
    return inserted


# Stripe's ids are far shorter; a longer one cannot be a unique index entry.
MAX_EVENT_ID_LENGTH = 255


def _parse_event(body: bytes) -> dict[str, Any]:
    """The fields every event must have, checked after the signature (so the body is Stripe's)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidWebhook("The webhook body is not JSON.") from None
    well_formed = (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and event["id"].startswith("evt_")
        and len(event["id"]) <= MAX_EVENT_ID_LENGTH
        and isinstance(event.get("type"), str)
        and isinstance(event.get("livemode"), bool)
        and isinstance(event.get("created"), int)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    )
    if not well_formed:
        raise InvalidWebhook("The webhook is not a Stripe event.")
    return event  # type: ignore[no-any-return]


# Where a `created` beyond the calendar is stored: the nearest moment a datetime can hold.
_FIRST_MOMENT = datetime(1, 1, 1, tzinfo=UTC)
_LAST_MOMENT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def _created_at(event: Mapping[str, Any]) -> datetime:
    """When Stripe created the event. A `created` that is no real time (a datetime holds years
    1 to 9999) is held to the nearest end of that range: a function of the event alone, like a
    real one, so every copy of the event lands in the same partition and meets its twin."""
    try:
        created = timestamp(event["created"])
    except (OverflowError, ValueError, OSError):
        created = None
    if created is None:
        logger.warning("webhook.created_out_of_range", stripe_event_id=event["id"])
        return _FIRST_MOMENT if event["created"] < 0 else _LAST_MOMENT
    return created


# Processing


@dataclass(frozen=True, slots=True)
class EventContext:
    """What a handler works with; it must finish by calling `complete` exactly once."""

    conn: Connection
    gateway: StripeGateway
    event: StoredEvent

    @property
    def object(self) -> Mapping[str, Any]:
        data_object: Mapping[str, Any] = self.event.payload["data"]["object"]
        return data_object

    async def claim(self, conn: Connection) -> bool:
        """Mark the event processed inside the caller's transaction; False if already done."""
        return await stripe_events.mark_processed(conn, self.event)

    async def complete(self, effect: Callable[[Connection], Awaitable[Any]] | None = None) -> None:
        """Apply the effect and mark the event processed, atomically."""
        async with self.conn.transaction():
            if await self.claim(self.conn) and effect is not None:
                await effect(self.conn)


Handler = Callable[[EventContext], Awaitable[None]]


async def _sync_subscriptions(
    ctx: EventContext,
    stripe_customer_id: object,
    *,
    failed_invoice: Mapping[str, Any] | None = None,
) -> None:
    customer = (
        await customers_db.select_customer_by_stripe_id(ctx.conn, stripe_customer_id)
        if isinstance(stripe_customer_id, str)
        else None
    )
    if customer is None:
        await ctx.complete()  # not one of our customers
        return
    await customers.sync_customer_subscriptions(
        ctx.conn,
        ctx.gateway,
        customer,
        unless_fetched_since=ctx.event.created_at,
        before_write=lambda conn: _claim_and_announce(ctx, conn, customer, failed_invoice),
    )


async def _claim_and_announce(
    ctx: EventContext,
    conn: Connection,
    customer: Customer,
    failed_invoice: Mapping[str, Any] | None,
) -> bool:
    """Claim the event; a failed invoice (as Stripe has it now) also tells calling apps and the
    customer (payment.failed), unless it has been paid or voided since."""
    if not await ctx.claim(conn):
        return False
    if ctx.event.type in invoices.INVOICE_EVENTS:
        await invoices.forget_invoices_of(conn, customer.stripe_customer_id)
    if failed_invoice is not None and failed_invoice.get("status") not in SETTLED_INVOICES:
        await outbox.emit(
            conn,
            "payment.failed",
            {
                "customer_id": customer.external_id,
                "invoice_id": failed_invoice.get("id"),
                "amount_due": failed_invoice.get("amount_due"),
                "currency": failed_invoice.get("currency"),
                "attempt_count": failed_invoice.get("attempt_count"),
                "hosted_invoice_url": stripe_hosted_url(failed_invoice.get("hosted_invoice_url")),
            },
            dedupe_key=f"payment.failed:{ctx.event.stripe_event_id}",
            emails=[("payment_failed", customer.email)] if customer.email else [],
        )
    return True


async def handle_subscription_signal(ctx: EventContext) -> None:
    await _sync_subscriptions(ctx, ctx.object.get("customer"))


async def handle_invoice_payment_failed(ctx: EventContext) -> None:
    """The invoice is fetched from Stripe, never taken from the payload: its customer, amounts
    and page link are Stripe's, so no signed-but-forged payload can reach a customer's inbox."""
    invoice = await ctx.gateway.retrieve_object("invoice", str(ctx.object.get("id")))
    await _sync_subscriptions(ctx, invoice.get("customer"), failed_invoice=invoice)


async def handle_checkout(ctx: EventContext) -> None:
    ours = await checkout_sessions.select_checkout_session(ctx.conn, str(ctx.object.get("id")))
    if ours is None:
        await ctx.complete()  # a session some other integration opened
        return
    if ours.mode == "subscription" and ctx.event.type != "checkout.session.expired":
        await _sync_subscriptions(ctx, ctx.object.get("customer"))
        return
    session = await ctx.gateway.retrieve_checkout_session(ours.stripe_session_id)

    async def record(conn: Connection) -> None:
        await checkout_sessions.update_checkout_status(conn, session.id, session.status)
        if ours.mode != "payment" or session.status != "complete":
            return
        if ctx.event.type == "checkout.session.async_payment_failed":
            status = "failed"
        elif session.payment_status in {"paid", "no_payment_required"}:
            status = "paid"
        else:
            status = "pending"
        order_id = await orders.upsert_order(
            conn,
            customer_id=ours.customer_id,
            stripe_checkout_session_id=session.id,
            stripe_payment_intent_id=session.payment_intent,
            status=status,
            currency=session.currency or "",
            amount_total=session.amount_total or 0,
            customer_email=session.customer_email,
            line_items=[{"price": ours.price_key, "quantity": ours.quantity}],
        )
        if status == "paid":
            await outbox.emit(
                conn,
                "order.completed",
                {
                    "customer_id": ours.external_customer_id,
                    "order_id": str(order_id),
                    "amount_total": session.amount_total,
                    "currency": session.currency,
                    "line_items": [{"price": ours.price_key, "quantity": ours.quantity}],
                    "checkout_session_id": session.id,
                },
                dedupe_key=f"order.completed:{session.id}",
                emails=[
                    *([("order_confirmation", session.customer_email)]
                      if session.customer_email else []),
                    ("sale_notification", None),
                ],
            )  # fmt: skip
            grants = await prices.select_price_grants(conn, ours.price_id)
            await orders.grant_credits(
                conn,
                order_id=order_id,
                customer_id=ours.customer_id,
                grants={feature: units * ours.quantity for feature, units in grants.items()},
            )

    await ctx.complete(record)


async def handle_customer(ctx: EventContext) -> None:
    """customer.updated and customer.deleted: fetch the customer from Stripe and mirror it.

    A customer Stripe reports deleted (whichever event brought the news) loses its Stripe id and,
    as in Stripe, every subscription; a customer.deleted that Stripe does not confirm changes
    nothing. Holding the customer's sync lock keeps a sync fetched before the deletion from
    writing its stale subscriptions after it.
    """
    stripe_customer_id = str(ctx.object.get("id"))
    customer = await customers_db.select_customer_by_stripe_id(ctx.conn, stripe_customer_id)
    if customer is None:
        await ctx.complete()
        return
    async with session_lock(ctx.conn, customers.customer_lock(customer)):
        current = await ctx.gateway.retrieve_object("customer", stripe_customer_id)
        deleted = current.get("deleted") is True
        if ctx.event.type == "customer.deleted" and not deleted:
            logger.warning("webhook.not_confirmed", stripe_event_id=ctx.event.stripe_event_id)

        async def mirror(conn: Connection) -> None:
            if deleted:
                await customers.mirror_stripe_deletion(
                    conn, customer, stripe_customer_id, deleted_at=_deleted_at(ctx)
                )
            elif ctx.event.type == "customer.updated":
                await customers_db.update_contact(
                    conn, customer.id, email=current.get("email"), name=current.get("name")
                )

        await ctx.complete(mirror)


def _deleted_at(ctx: EventContext) -> datetime:
    """When Stripe deleted the customer: the customer.deleted event's time; for an earlier event
    that found the customer gone, the moment we found out."""
    if ctx.event.type == "customer.deleted":
        return ctx.event.stripe_created_at
    return datetime.now(UTC)


async def handle_catalog_object(ctx: EventContext) -> None:
    """product.* and price.*: compare Stripe's copy with the catalog; never let it overwrite."""
    kind = ctx.event.type.split(".")[0]
    deleted = ctx.event.type.endswith(".deleted")
    current = (
        dict(ctx.object)
        if deleted
        else await ctx.gateway.retrieve_object(kind, str(ctx.object.get("id")))
    )

    async def compare(conn: Connection) -> None:
        await catalog_sync.record_stripe_change(conn, ctx.event.type, current)

    await ctx.complete(compare)


async def handle_without_effect(ctx: EventContext) -> None:
    await ctx.complete()


def handler_for(event_type: str) -> Handler:
    if event_type == "invoice.payment_failed":
        return handle_invoice_payment_failed
    if event_type in SUBSCRIPTION_SIGNALS:
        return handle_subscription_signal
    if event_type in reversals.DISPUTE_EVENTS:
        return reversals.handle_dispute
    if event_type in CHECKOUT_EVENTS:
        return handle_checkout
    if event_type.startswith(("product.", "price.")):
        return handle_catalog_object
    handlers: dict[str, Handler] = {
        "customer.updated": handle_customer,
        "customer.deleted": handle_customer,
        "charge.refunded": reversals.handle_charge_refunded,
    }
    handlers |= dict.fromkeys(invoices.INVOICE_EVENTS, invoices.handle_invoice_event)
    return handlers.get(event_type, handle_without_effect)


def retry_delay(attempts: int) -> float:
    """Exponential backoff with jitter: ~10 s, 20 s, 40 s … capped at an hour."""
    base: float = min(MAX_BACKOFF_SECONDS, 5.0 * 2**attempts)
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security


@dataclass
class ProcessingCounts:
    processed: int = 0
    failed: int = 0


class EventProcessor:
    """Claims due events and runs their handlers; several processors may share one ledger."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        gateway: StripeGateway,
        *,
        max_attempts: int,
        lease_seconds: float = LEASE_SECONDS,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self.counts = ProcessingCounts()

    async def process_due(self, *, limit: int = 20) -> int:
        """Process up to `limit` due events; returns how many were claimed."""
        claimed = await stripe_events.claim_due_events(
            self.pool, limit=limit, lease_seconds=self.lease_seconds
        )
        for event in claimed:
            await self.process(event)
        return len(claimed)

    async def process(self, event: StoredEvent) -> None:
        log = logger.bind(stripe_event_id=event.stripe_event_id, type=event.type)
        try:
            async with self.gateway.holding_connection(self.pool) as conn:
                await handler_for(event.type)(EventContext(conn, self.gateway, event))
        except Exception as exc:
            give_up = event.attempts >= self.max_attempts
            await stripe_events.record_failure(
                self.pool,
                event,
                error=f"{type(exc).__name__}: {exc}",
                retry_in_seconds=None if give_up else retry_delay(event.attempts),
            )
            self.counts.failed += 1
            if self.metrics is not None:
                self.metrics.events_failed.labels(event.type).inc()
            log.warning(
                "webhook.failed" if give_up else "webhook.retry_scheduled",
                attempts=event.attempts,
                exc_info=exc,
            )
            return
        self.counts.processed += 1
        if self.metrics is not None:
            self.metrics.events_processed.labels(event.type).inc()
        log.info("webhook.processed", attempts=event.attempts)
