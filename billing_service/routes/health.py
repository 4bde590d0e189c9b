"""Operational routes: liveness, readiness, Prometheus metrics and the OpenAPI contract."""

from __future__ import annotations

import asyncio

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.db import stripe_events
from billing_service.db.migrations import MigrationError, applied_versions, pending_migrations
from billing_service.errors import DatabaseUnavailable
from billing_service.metrics import CONTENT_TYPE
from billing_service.resources import openapi_path
from billing_service.routes._http import JSONResponse
from billing_service.state import app_state

READINESS_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> Response:
    """The process is up and serving; says nothing about dependencies."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when PostgreSQL answers and every migration this build knows is applied."""
    state = app_state(request)
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            async with state["pool"].acquire() as conn:
                applied = await applied_versions(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        raise DatabaseUnavailable("PostgreSQL is not reachable.", retry_after=5) from None
    try:
        pending = pending_migrations(state["migrations"], applied)
    except MigrationError as exc:
        raise DatabaseUnavailable(str(exc)) from None
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        raise DatabaseUnavailable(
            f"Migrations not applied: {names}. Run `billing-service migrate`."
        )
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """Prometheus text; the ledger gauges are read from the database at scrape time."""
    state = app_state(request)
    registry = state["metrics"]
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            pending, oldest_age = await stripe_events.ledger_stats(state["pool"])
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pass  # the request and pool metrics are still worth serving
    else:
        registry.events_pending.set(pending)
        registry.oldest_pending_age.set(oldest_age or 0.0)
    return Response(registry.render(), media_type=CONTENT_TYPE)


async def openapi_document(request: Request) -> Response:
    return Response(openapi_path().read_bytes(), media_type="application/yaml")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.yaml", openapi_document, methods=["GET"]),
]
