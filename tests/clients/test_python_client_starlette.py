"""`require_feature` in a real Starlette app whose client talks to a live service."""

from __future__ import annotations

import httpx
from billing_client import AsyncBillingClient
from billing_client.starlette import require_feature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.clients.conftest import Keys
from tests.live_service import LiveService


def user(request: Request) -> str:
    return str(request.path_params["user"])


def calling_app(billing: AsyncBillingClient) -> Starlette:
    """An app with a metered endpoint (tracked) and a boolean-gated one (checked)."""

    @require_feature(billing, "ai_calls", customer=user, track=True)
    async def generate(request: Request) -> Response:
        if request.query_params.get("fail"):
            return PlainTextResponse("broken", status_code=500)
        return PlainTextResponse("generated")

    @require_feature(billing, "export_csv", customer=user)
    async def export(request: Request) -> Response:
        return PlainTextResponse("a,b\n")

    return Starlette(routes=[Route("/{user}/generate", generate), Route("/{user}/export", export)])


async def test_require_feature_tracks_refuses_and_gives_back(
    live_service: LiveService, keys: Keys
) -> None:
    """Five calls on the free plan run and count; the sixth is a 403 naming the upgrade; a
    failing call gives its unit back; a feature outside the plan is refused."""
    async with AsyncBillingClient(live_service.base, keys.usage) as billing:
        transport = httpx.ASGITransport(app=calling_app(billing))
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as app:
            failed = await app.get("/user_1/generate?fail=1")
            assert failed.status_code == 500
            ran = [(await app.get("/user_1/generate")).status_code for _ in range(5)]
            assert ran == [200] * 5
            refused = await app.get("/user_1/generate")
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            problem = refused.json()
            assert problem["type"] == "urn:billing-service:problem:limit-reached"
            assert problem["upgrade"] == {"plan": "pro", "price": "pro_monthly"}

            export = await app.get("/user_1/export")
            assert export.status_code == 403
            assert export.json()["type"] == "urn:billing-service:problem:feature-not-in-plan"

        used = (await billing.entitlements("user_1")).get("ai_calls")
        assert used is not None
        assert used.used == 5
