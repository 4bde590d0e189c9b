"""Stripe invoices as our own dataclasses: listed invoices and the preview of the next one.

Parsed from plain mappings (`StripeObject.to_dict()`), keeping only what customers are shown.
Links pass only when Stripe hosts them (`stripe_hosted_url`): an invoice's URLs reach apps and,
through them, customers' browsers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_service.stripe_objects import stripe_hosted_url, timestamp


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line of an invoice: what it bills, for which period, at which Stripe price."""

    description: str | None
    amount: int
    quantity: int | None
    period_start: datetime | None
    period_end: datetime | None
    price_id: str | None  # the Stripe price; the service names it by its lookup key


@dataclass(frozen=True, slots=True)
class StripeInvoice:
    """An invoice as Stripe has it (a preview has no number, URLs or final status)."""

    id: str | None
    number: str | None
    status: str | None
    currency: str
    subtotal: int
    tax: int
    total: int
    amount_due: int
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    created: datetime | None
    lines: tuple[InvoiceLine, ...]
    more_lines: bool  # Stripe includes the first lines only; more follow on its lines list


def _line_price(line: Mapping[str, Any]) -> str | None:
    """The price of a line: `pricing.price_details.price` (an id, or the expanded price)."""
    details = (line.get("pricing") or {}).get("price_details") or {}
    price = details.get("price")
    if isinstance(price, Mapping):
        return str(price["id"])
    return price if isinstance(price, str) else None


def parse_line(line: Mapping[str, Any]) -> InvoiceLine:
    period = line.get("period") or {}
    quantity = line.get("quantity")
    return InvoiceLine(
        description=line.get("description"),
        amount=int(line.get("amount") or 0),
        quantity=quantity if isinstance(quantity, int) else None,
        period_start=timestamp(period.get("start")),
        period_end=timestamp(period.get("end")),
        price_id=_line_price(line),
    )


def _tax(invoice: Mapping[str, Any]) -> int:
    """Tax added on top (`total_taxes`, current API versions); 0 when there is none."""
    taxes = invoice.get("total_taxes")
    if isinstance(taxes, list):
        return sum(int(tax.get("amount") or 0) for tax in taxes if isinstance(tax, Mapping))
    return 0


def parse_invoice(invoice: Mapping[str, Any]) -> StripeInvoice:
    lines = invoice.get("lines") or {}
    return StripeInvoice(
        id=invoice.get("id"),
        number=invoice.get("number"),
        status=invoice.get("status"),
        currency=str(invoice.get("currency") or ""),
        subtotal=int(invoice.get("subtotal") or 0),
        tax=_tax(invoice),
        total=int(invoice.get("total") or 0),
        amount_due=int(invoice.get("amount_due") or 0),
        period_start=timestamp(invoice.get("period_start")),
        period_end=timestamp(invoice.get("period_end")),
        hosted_invoice_url=stripe_hosted_url(invoice.get("hosted_invoice_url")),
        invoice_pdf=stripe_hosted_url(invoice.get("invoice_pdf")),
        created=timestamp(invoice.get("created")),
        lines=tuple(parse_line(line) for line in lines.get("data") or ()),
        more_lines=bool(lines.get("has_more")),
    )
