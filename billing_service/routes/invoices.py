"""Invoice routes: a customer's invoices, a page at a time, and the preview of the next one."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.errors import FieldError, ValidationFailed
from billing_service.routes._http import JSONResponse, customer_id_param
from billing_service.routes._pagination import encode_cursor, page_request
from billing_service.routes.customers import view_of
from billing_service.services import customers, invoices
from billing_service.services.api_keys import Scope
from billing_service.state import app_state
from billing_service.stripe_invoices import InvoiceLine, StripeInvoice

_INVOICE_ID = re.compile(r"in_[A-Za-z0-9]{1,250}")


def _period(start: datetime | None, end: datetime | None) -> dict[str, datetime | None]:
    return {"start": start, "end": end}


def serialize_invoice(invoice: StripeInvoice) -> dict[str, object]:
    return {
        "id": invoice.id,
        "number": invoice.number,
        "status": invoice.status,
        "total": invoice.total,
        "currency": invoice.currency,
        "period": _period(invoice.period_start, invoice.period_end),
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "invoice_pdf": invoice.invoice_pdf,
        "created": invoice.created,
    }


def _starting_after(cursor: tuple[object, ...] | None) -> str | None:
    """The invoice a page starts after, from a cursor this list returned."""
    if cursor is None:
        return None
    match cursor:
        case (str(invoice_id),) if _INVOICE_ID.fullmatch(invoice_id):
            return invoice_id
    raise ValidationFailed([FieldError("cursor", "must be a next_cursor this list returned")])


@requires(Scope.BILLING)
async def list_invoices(request: Request) -> Response:
    """The customer's invoices in Stripe, newest first; `Age` says a page came from the cache."""
    state = app_state(request)
    page = page_request(request)
    starting_after = _starting_after(page.cursor)
    customer = await customers.get_customer(state["pool"], customer_id_param(request))
    found = await invoices.list_invoices(
        state["pool"],
        state["stripe"],
        customer,
        limit=page.limit,
        starting_after=starting_after,
        fresh_for=timedelta(seconds=state["settings"].invoice_cache_seconds),
    )
    # Stripe answers at most 100 a page: a larger `limit` gets 100, and `has_more` says more follow.
    body = {
        "data": [serialize_invoice(invoice) for invoice in found.invoices],
        "has_more": found.has_more,
        "next_cursor": (
            encode_cursor(found.invoices[-1].id or "")
            if found.has_more and found.invoices
            else None
        ),
    }
    headers = {} if found.age is None else {"Age": str(int(found.age.total_seconds()))}
    return JSONResponse(body, headers=headers)


def serialize_line(line: InvoiceLine, prices: dict[str, invoices.PricedLine]) -> dict[str, object]:
    priced = prices.get(line.price_id or "")
    return {
        "description": line.description,
        "amount": line.amount,
        "quantity": line.quantity,
        "period": _period(line.period_start, line.period_end),
        "price": priced.lookup_key if priced else None,
        "metered": priced.metered if priced else False,
    }


@requires(Scope.BILLING)
async def upcoming_invoice(request: Request) -> Response:
    """What Stripe would invoice next for the customer's subscription, metered usage included."""
    state = app_state(request)
    customer = await customers.get_customer(state["pool"], customer_id_param(request))
    view = await view_of(request, customer)
    upcoming = await invoices.upcoming_invoice(
        state["pool"], state["stripe"], customer, view.subscription
    )
    invoice = upcoming.invoice
    return JSONResponse(
        {
            "stripe_subscription_id": upcoming.subscription.stripe_subscription_id,
            "currency": invoice.currency,
            "subtotal": invoice.subtotal,
            "tax": invoice.tax,
            "total": invoice.total,
            "amount_due": invoice.amount_due,
            "period": _period(invoice.period_start, invoice.period_end),
            "lines": [serialize_line(line, upcoming.prices) for line in invoice.lines],
            "more_lines": invoice.more_lines,
        }
    )


routes = [
    Route("/v1/customers/{customer_id}/invoices", list_invoices, methods=["GET"]),
    Route("/v1/customers/{customer_id}/upcoming-invoice", upcoming_invoice, methods=["GET"]),
]
