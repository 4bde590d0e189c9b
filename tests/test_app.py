"""The app as `serve` builds it: what happens once it has started."""

from __future__ import annotations

import gc

import httpx
from asgi_lifespan import LifespanManager
from starlette.middleware.cors import CORSMiddleware

from billing_service.app import create_app
from billing_service.config import Settings


async def test_serving_processes_freeze_the_start_up_heap(settings: Settings) -> None:
    """With `freeze_heap` (as `serve` builds it), what start-up allocated is moved out of the
    collector's sight once the app has started, and the app still answers."""
    gc.unfreeze()
    app = create_app(settings.model_copy(update={"worker_enabled": False}), freeze_heap=True)
    try:
        async with LifespanManager(app) as manager:
            assert gc.get_freeze_count() > 10_000
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/healthz")).json() == {"status": "ok"}
    finally:
        gc.unfreeze()


async def test_middleware_added_to_the_app_runs_inside_the_request_middleware(
    settings: Settings,
) -> None:
    """A middleware added the usual Starlette way (here CORS) is kept: its own answers (a
    preflight) carry a request id and are counted (as `unmatched`: no route ran), and the
    routes behind it still answer, with its headers."""
    app = create_app(settings.model_copy(update={"worker_enabled": False}))
    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"], allow_methods=["*"])
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            preflight = await client.options(
                "/healthz",
                headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "GET",
                },
            )
            plain = await client.get("/healthz", headers={"Origin": "https://app.example"})
            metrics = (await client.get("/metrics")).text
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert len(preflight.headers["x-request-id"]) == 32
    assert plain.json() == {"status": "ok"}
    assert plain.headers["access-control-allow-origin"] == "https://app.example"
    assert 'method="OPTIONS",route="unmatched",status="200"' in metrics
