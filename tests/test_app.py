"""The app as `serve` builds it: what happens once it has started."""

from __future__ import annotations

import gc

import httpx
from asgi_lifespan import LifespanManager

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
