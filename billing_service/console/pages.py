"""The console's pages: each reads through `reader` (one call per service) and renders."""

from __future__ import annotations

import functools
import re
import uuid
from datetime import timedelta

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from billing_service.console import charts
from billing_service.console._data import lagging, reader
from billing_service.console._web import Form, money, render, signed_in
from billing_service.console.session import Session
from billing_service.db import customers as customers_db
from billing_service.db import outbox
from billing_service.db import stripe_events as events_db
from billing_service.db.stripe_events import STATUSES
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.routes._http import CUSTOMER_ID_PATTERN
from billing_service.routes._pagination import (
    PageRequest,
    after,
    page_body,
    page_request,
    time_cursor,
)
from billing_service.services import catalog, operator_view, revenue
from billing_service.services.revenue import RevenueReport
from billing_service.state import app_state

PAGE_SIZE = 50
_EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,100}")
_EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,255}")
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


def _grace(request: Request) -> timedelta:
    return timedelta(days=app_state(request)["settings"].past_due_grace_days)


def _page(request: Request) -> PageRequest:
    """A page of `PAGE_SIZE` after the `cursor` a previous page linked to."""
    return PageRequest(PAGE_SIZE, page_request(request).cursor)


Chart = tuple[str, Markup]


def revenue_charts(report: RevenueReport) -> list[Chart]:
    """Subscriptions won and lost per week, and net revenue per week in each currency."""
    labels = [f"W{week.start.isocalendar().week:02d}" for week in report.weeks]
    title = "New and churned subscriptions per week"
    drawn = [
        (
            title,
            charts.bar_chart(
                title,
                labels,
                [
                    ("new", [week.new_subscriptions for week in report.weeks]),
                    ("churned", [week.churned_subscriptions for week in report.weeks]),
                ],
            ),
        )
    ]
    currencies = sorted({c for week in report.weeks for c in week.revenue} | set(report.mrr))
    for currency in currencies:
        net = [week.revenue.get(currency, {}).get("net", 0) for week in report.weeks]
        title = f"Net revenue per week ({currency.upper()})"
        drawn.append(
            (
                title,
                charts.bar_chart(
                    title,
                    labels,
                    [(f"net {currency.upper()}", net)],
                    shown=functools.partial(_money_in, currency),
                ),
            )
        )
    return drawn


def _money_in(currency: str, amount: int) -> str:
    return money(amount, currency)


@signed_in
async def overview(request: Request, session: Session, _form: Form) -> Response:
    now = app_state(request)["clock"]()
    report = await lagging(request, lambda pool: revenue.revenue_report(pool, now=now))
    health = await lagging(request, operator_view.health)
    return render(
        request,
        "overview.html",
        {
            "report": report,
            "health": health,
            "cap": operator_view.COUNT_CAP,
            "charts": revenue_charts(report),
        },
        session=session,
    )


@signed_in
async def customer_list(request: Request, session: Session, _form: Form) -> Response:
    text = request.query_params.get("q", "").strip()
    if len(text) > 255 or not text.isprintable():
        raise ValidationFailed([FieldError("q", "must be at most 255 printable characters")])
    page = _page(request)
    grace = _grace(request)
    listed = await lagging(
        request,
        lambda pool: customers_db.select_customer_page(
            pool,
            found=customers_db.search(text) if text else None,
            after=after(page),
            limit=page.limit + 1,
            grace=grace,
        ),
    )
    body = page_body(listed, page, serialize=lambda row: row, cursor_of=time_cursor)
    return render(
        request,
        "customers.html",
        {"q": text, "customers": body["data"], "next_cursor": body["next_cursor"]},
        session=session,
    )


_BUCKET_LABELS = {"day": "%d %b", "week": "%d %b", "month": "%b %Y"}


def _usage_chart(feature: str, chart: operator_view.UsageChart) -> Chart:
    granularity = chart.window.granularity.name
    points = [p for p in chart.periods if p.period_end is not None]
    title = f"{feature}: units used per {granularity}"
    label = _BUCKET_LABELS.get(granularity, "%d %b")
    return title, charts.bar_chart(
        title,
        [p.period_start.strftime(label) for p in points],
        [("used", [p.used for p in points])],
    )


def dashboard_url(livemode: bool, kind: str, stripe_id: str) -> str:
    """The object's page in Stripe's dashboard, in test or live mode as the service runs."""
    return f"https://dashboard.stripe.com/{'' if livemode else 'test/'}{kind}/{stripe_id}"


@signed_in
async def customer_detail(request: Request, session: Session, _form: Form) -> Response:
    customer_key = request.path_params["customer_id"]
    if not _CUSTOMER_ID.fullmatch(customer_key):
        raise NotFound(f"No customer has id '{customer_key}'.")
    state = app_state(request)
    page = await operator_view.customer_page(
        reader(request),
        customer_key,
        now=state["clock"](),
        grace=_grace(request),
        cache=state["entitlement_cache"],
    )
    metered = [e for e in page.entitlements if e.metered and e.enabled]
    settings = state["settings"]
    return render(
        request,
        "customer.html",
        {
            "page": page,
            "customer": page.view.customer,
            "metered": metered,
            "usage_charts": [_usage_chart(f, chart) for f, chart in page.usage.items()],
            "dashboard": lambda kind, stripe_id: dashboard_url(
                settings.stripe_livemode, kind, stripe_id
            ),
            "return_url": (
                f"https://{settings.allowed_redirect_hosts[0]}/"
                if settings.allowed_redirect_hosts
                else ""
            ),
        },
        session=session,
    )


@signed_in
async def event_list(request: Request, session: Session, _form: Form) -> Response:
    params = request.query_params
    status = params.get("status") or None
    event_type = params.get("type") or None
    errors = []
    if status is not None and status not in STATUSES:
        errors.append(FieldError("status", f"must be one of {', '.join(STATUSES)}"))
    if event_type is not None and not _EVENT_TYPE.fullmatch(event_type):
        errors.append(FieldError("type", "must be a Stripe event type, such as invoice.paid"))
    if errors:
        raise ValidationFailed(errors)
    page = _page(request)
    found = await lagging(
        request,
        lambda pool: events_db.select_events(
            pool, status=status, type=event_type, after=after(page), limit=page.limit + 1
        ),
    )
    body = page_body(found, page, serialize=lambda row: row, cursor_of=time_cursor)
    return render(
        request,
        "events.html",
        {
            "events": body["data"],
            "next_cursor": body["next_cursor"],
            "status": status or "",
            "type": event_type or "",
            "statuses": STATUSES,
        },
        session=session,
    )


@signed_in
async def event_detail(request: Request, session: Session, _form: Form) -> Response:
    event_id = request.path_params["event_id"]
    if not _EVENT_ID.fullmatch(event_id):
        raise NotFound(f"No Stripe event has id '{event_id}'.")
    event = await operator_view.event_with_payload(reader(request), event_id)
    return render(request, "event.html", {"event": event}, session=session)


@signed_in
async def catalog_page(request: Request, session: Session, _form: Form) -> Response:
    pool = reader(request)
    plans = await catalog.plan_views(pool)
    spec = await catalog.current_catalog(pool)
    health = await operator_view.catalog_health(pool)
    return render(
        request,
        "catalog.html",
        {"plans": plans, "features": spec.features, "health": health},
        session=session,
    )


@signed_in
async def deliveries(request: Request, session: Session, _form: Form) -> Response:
    pool = reader(request)
    endpoints = await outbox.select_endpoints(pool, after=None, limit=PAGE_SIZE)
    chosen = request.query_params.get("endpoint")
    endpoint = endpoints[0] if endpoints and not chosen else None
    if chosen:
        try:
            endpoint = next(e for e in endpoints if e.id == uuid.UUID(chosen))
        except (ValueError, StopIteration):
            raise NotFound(f"No endpoint has id {chosen}.") from None
    page = _page(request)
    log = []
    if endpoint is not None:
        log = await outbox.select_deliveries(
            pool, endpoint.id, after=after(page), limit=page.limit + 1
        )
    body = page_body(log, page, serialize=lambda row: row, cursor_of=time_cursor)
    return render(
        request,
        "deliveries.html",
        {
            "endpoints": endpoints,
            "endpoint": endpoint,
            "deliveries": body["data"],
            "next_cursor": body["next_cursor"],
        },
        session=session,
    )
