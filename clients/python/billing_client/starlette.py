"""`require_feature`: gate a Starlette (or FastAPI-style) endpoint on a feature of the caller.

Needs Starlette, which the client does not depend on: import this module only in apps that
have it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from billing_client._async import AsyncBillingClient
from billing_client._core import new_idempotency_key
from billing_client.errors import PROBLEM_PREFIX
from billing_client.models import Decision

Endpoint = Callable[[Request], Awaitable[Response]]


def require_feature(
    billing: AsyncBillingClient,
    feature: str,
    *,
    customer: Callable[[Request], str],
    amount: int = 1,
    track: bool = False,
) -> Callable[[Endpoint], Endpoint]:
    """Run the endpoint only when `customer(request)` may use `amount` of `feature`; else answer
    403 problem+json (`limit-reached` or `feature-not-in-plan`, with the `upgrade` that would
    allow it).

    With `track=True` the usage is recorded before the endpoint runs, in the service's one atomic
    check-and-record (so concurrent requests cannot overrun a hard limit), and given back when
    the endpoint raises or answers 5xx.
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            customer_id = customer(request)
            key = new_idempotency_key()
            decision: Decision
            if track:
                decision = await billing.track(customer_id, feature, amount, idempotency_key=key)
            else:
                decision = await billing.check(customer_id, feature, amount)
            if not decision.allowed:
                return denied(decision)
            try:
                response = await endpoint(request)
            except BaseException:
                if track:
                    await _give_back(billing, customer_id, feature, amount, key)
                raise
            if track and response.status_code >= 500:
                await _give_back(billing, customer_id, feature, amount, key)
            return response

        return guarded

    return decorate


def denied(decision: Decision) -> Response:
    """The 403 problem for a refused decision."""
    slug = (decision.reason or "limit_reached").replace("_", "-")
    body: dict[str, object] = {
        "type": PROBLEM_PREFIX + slug,
        "title": "Feature not available",
        "status": 403,
        "detail": f"The plan does not allow this use of '{decision.feature}'.",
        "feature": decision.feature,
        "remaining": decision.remaining,
    }
    if decision.upgrade is not None:
        body["upgrade"] = {"plan": decision.upgrade.plan, "price": decision.upgrade.price}
    return JSONResponse(body, status_code=403, media_type="application/problem+json")


async def _give_back(
    billing: AsyncBillingClient, customer_id: str, feature: str, amount: int, key: str
) -> None:
    await billing.track(customer_id, feature, -amount, idempotency_key=f"{key}:undo")
