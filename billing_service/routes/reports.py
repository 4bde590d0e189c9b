"""Reports for operators: revenue figures summed from the mirror (services/revenue.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.routes._http import JSONResponse
from billing_service.services import revenue
from billing_service.services.api_keys import Scope
from billing_service.state import app_state, lag_tolerant


def serialize_report(report: revenue.RevenueReport) -> dict[str, object]:
    currencies = sorted(set(report.arr) | set(report.one_time))
    return {
        "as_of": report.as_of,
        "recurring_statuses": ["active", "past_due"],
        "currencies": {
            currency: {
                "mrr": report.mrr.get(currency, 0),
                "arr": report.arr.get(currency, 0),
                "one_time_revenue": report.one_time.get(currency, 0),
            }
            for currency in currencies
        },
        "subscriptions": report.subscriptions,
        "weeks": [
            {
                "week": f"{week.start.isocalendar().year}-W{week.start.isocalendar().week:02d}",
                "start": week.start,
                "new_subscriptions": week.new_subscriptions,
                "churned_subscriptions": week.churned_subscriptions,
                "revenue": week.revenue,
            }
            for week in report.weeks
        ],
    }


@requires(Scope.ADMIN)
async def revenue_report(request: Request) -> Response:
    now = app_state(request)["clock"]()
    report = await lag_tolerant(request, lambda pool: revenue.revenue_report(pool, now=now))
    return JSONResponse(serialize_report(report))


routes = [Route("/v1/reports/revenue", revenue_report, methods=["GET"])]
