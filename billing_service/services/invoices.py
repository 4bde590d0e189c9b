"""A customer's invoices and the preview of their next one, read from Stripe.

Listed pages are kept in PostgreSQL (db/invoice_pages.py) rather than in each process: every
replica answers from a page any of them fetched, a restart keeps them, and while Stripe is
unavailable any replica can still show what was read in the last day. Previews are not kept:
they move with every unit of metered usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from billing_service.db import customers as customers_db
from billing_service.db import invoice_lines, invoice_pages
from billing_service.db.customers import Customer
from billing_service.db.invoice_pages import PageKey
from billing_service.db.pool import Connection
from billing_service.db.subscriptions import LIVE_STATUSES, Subscription
from billing_service.errors import NotFound, StripeNotConfigured, StripeUnavailable
from billing_service.stripe_gateway import StripeGateway, require_stripe
from billing_service.stripe_invoices import StripeInvoice
from billing_service.stripe_objects import stripe_hosted_url, timestamp

if TYPE_CHECKING:
    from billing_service.services.stripe_events import EventContext

logger = structlog.get_logger(__name__)

# Stripe lists at most 100 objects a call.
STRIPE_PAGE_MAX = 100
# How long a page read from Stripe may still answer while Stripe is unavailable.
KEPT_FOR = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class InvoicePage:
    """Invoices newest first; `age` is how old the page is when it came from the cache."""

    invoices: list[StripeInvoice]
    has_more: bool
    age: timedelta | None


async def list_invoices(
    pool: asyncpg.Pool,
    gateway: StripeGateway | None,
    customer: Customer,
    *,
    limit: int,
    starting_after: str | None,
    fresh_for: timedelta,
) -> InvoicePage:
    """A page of the customer's invoices: from the cache while fresh, else from Stripe; a page
    read in the last day answers when Stripe is unavailable or not configured."""
    if customer.stripe_customer_id is None:
        return InvoicePage([], has_more=False, age=None)  # never checked out: no invoices
    key = PageKey(
        customer.id, customer.stripe_customer_id, starting_after, min(limit, STRIPE_PAGE_MAX)
    )
    cached = await invoice_pages.select_page(pool, key, max_age=KEPT_FOR)
    if cached is not None and cached.age <= fresh_for:
        return _from_cache(cached)
    try:
        invoices, has_more = await require_stripe(gateway).list_invoices(
            key.stripe_customer_id, limit=key.page_size, starting_after=starting_after
        )
    except (StripeUnavailable, StripeNotConfigured):
        if cached is None:
            raise
        logger.warning(
            "invoices.served_stale",
            customer_id=customer.external_id,
            age_seconds=int(cached.age.total_seconds()),
        )
        return _from_cache(cached)
    await invoice_pages.store_page(
        pool, key, invoices=[_to_json(i) for i in invoices], has_more=has_more, keep_for=KEPT_FOR
    )
    return InvoicePage(invoices, has_more=has_more, age=None)


# Events after which a customer's list shows something new: an invoice issued, paid, failed,
# voided, written off or deleted (a draft). Their cached pages are dropped, whatever the TTL.
INVOICE_EVENTS = frozenset(
    {
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "invoice.deleted",
    }
)


async def forget_invoices_of(conn: Connection, stripe_customer_id: object) -> None:
    """Drop the cached invoice pages of the Stripe customer's customer, if they are ours."""
    if not isinstance(stripe_customer_id, str):
        return
    customer = await customers_db.select_customer_by_stripe_id(conn, stripe_customer_id)
    if customer is not None:
        await invoice_pages.forget_customer_pages(conn, customer.id)


async def handle_invoice_event(ctx: EventContext) -> None:
    """An invoice event with no other effect: the next read of the list asks Stripe. Only a
    cache is dropped, so the payload's customer is enough (nothing is taken from it)."""

    async def forget(conn: Connection) -> None:
        await forget_invoices_of(conn, ctx.object.get("customer"))

    await ctx.complete(forget)


def _from_cache(cached: invoice_pages.CachedPage) -> InvoicePage:
    return InvoicePage(
        [_from_json(item) for item in cached.invoices], has_more=cached.has_more, age=cached.age
    )


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _to_json(invoice: StripeInvoice) -> dict[str, Any]:
    """What a listed invoice shows, as kept in the cache (moments as epoch seconds, no lines)."""
    return {
        "id": invoice.id, "number": invoice.number, "status": invoice.status,
        "currency": invoice.currency, "subtotal": invoice.subtotal, "tax": invoice.tax,
        "total": invoice.total, "amount_due": invoice.amount_due,
        "hosted_invoice_url": invoice.hosted_invoice_url, "invoice_pdf": invoice.invoice_pdf,
        "period_start": _epoch(invoice.period_start), "period_end": _epoch(invoice.period_end),
        "created": _epoch(invoice.created),
    }  # fmt: skip


def _from_json(item: dict[str, Any]) -> StripeInvoice:
    return StripeInvoice(
        id=item["id"], number=item["number"], status=item["status"], currency=item["currency"],
        subtotal=item["subtotal"], tax=item["tax"], total=item["total"],
        amount_due=item["amount_due"],
        hosted_invoice_url=stripe_hosted_url(item["hosted_invoice_url"]),
        invoice_pdf=stripe_hosted_url(item["invoice_pdf"]),
        period_start=timestamp(item["period_start"]), period_end=timestamp(item["period_end"]),
        created=timestamp(item["created"]),
        lines=(), more_lines=False,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PricedLine:
    """What the route needs to name a line's price: its lookup key, and whether it is metered."""

    lookup_key: str | None
    metered: bool


@dataclass(frozen=True, slots=True)
class UpcomingInvoice:
    subscription: Subscription
    invoice: StripeInvoice
    prices: dict[str, PricedLine]  # by Stripe price id


async def upcoming_invoice(
    pool: asyncpg.Pool,
    gateway: StripeGateway | None,
    customer: Customer,
    subscription: Subscription | None,
) -> UpcomingInvoice:
    """Stripe's preview of the next invoice of the subscription that carries the customer's
    plan, metered usage so far included. 404 without a live subscription, or when Stripe says
    no invoice will come (it ends with the period)."""
    if (
        subscription is None
        or subscription.status not in LIVE_STATUSES
        or customer.stripe_customer_id is None
    ):
        raise NotFound(f"Customer '{customer.external_id}' has no subscription to invoice.")
    preview = await require_stripe(gateway).preview_invoice(
        customer.stripe_customer_id, subscription.stripe_subscription_id
    )
    if preview is None:
        raise NotFound(
            f"Customer '{customer.external_id}' has no next invoice: the subscription ends "
            "with its current period."
        )
    price_ids = sorted({line.price_id for line in preview.lines if line.price_id is not None})
    prices = await invoice_lines.select_line_prices(pool, subscription.id, price_ids)
    return UpcomingInvoice(
        subscription,
        preview,
        {price_id: PricedLine(*facts) for price_id, facts in prices.items()},
    )
