"""The application factory: routes, middleware, exception handlers and the lifespan."""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import structlog
from starlette.applications import Starlette
from starlette.types import ASGIApp

from billing_service import console, problems
from billing_service.auth import accepts_customer_token
from billing_service.config import ConfigurationError, Settings, load_settings
from billing_service.cors import CorsMiddleware, CorsRoute
from billing_service.db.migrations import discover_migrations
from billing_service.db.pool import create_pool
from billing_service.invalidation import Listener
from billing_service.jobs import build_jobs, run_scheduler
from billing_service.logs import configure_logging
from billing_service.metrics import Metrics
from billing_service.middleware import RequestMiddleware, route_template_lookup
from billing_service.outbound import OutboundPolicy, Resolver, system_resolver
from billing_service.outbound_http import WebhookClient
from billing_service.ratelimit import FailureWindows, TokenBuckets
from billing_service.read_replica import ReadRouting
from billing_service.resources import migrations_dir
from billing_service.routes import (
    api_keys,
    catalog,
    checkout,
    customers,
    discounts,
    events,
    grants,
    health,
    invoices,
    meter_events,
    reports,
    teams,
    usage,
    webhook_endpoints,
)
from billing_service.routing import IndexedRouter
from billing_service.services.email import EmailWorker
from billing_service.services.entitlement_cache import EntitlementCache
from billing_service.services.key_cache import KeyCache
from billing_service.services.meter_events import MeterEventDelivery
from billing_service.services.outgoing_webhooks import DeliveryWorker
from billing_service.services.stripe_events import EventProcessor
from billing_service.services.token_index import TokenIndex
from billing_service.services.usage_publisher import UsagePublisher
from billing_service.state import AppState, Limits
from billing_service.stripe_gateway import StripeGateway
from billing_service.worker import PollingWorker

logger = structlog.get_logger(__name__)

# A replica that does not accept a connection within this long is taken as down for the read at
# hand (one refusing it, the usual case, is known at once).
REPLICA_CONNECT_TIMEOUT = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    resolver: Resolver = system_resolver,
    freeze_heap: bool = False,
) -> Starlette:
    """Build the ASGI app; connections are opened by the lifespan, not here.

    `clock` is what usage periods are computed from; tests move it across period boundaries.
    `resolver` answers the DNS questions about webhook endpoints; tests script its answers.
    `freeze_heap` (serving processes): once started, move every object start-up made out of the
    garbage collector's sight (`gc.freeze`), so full collections, which otherwise walk those
    ~80,000 objects for ~60 ms mid-request, take about a millisecond.
    """
    if settings.database_url is None:
        raise ConfigurationError("BILLING_DATABASE_URL: required to serve the API")
    database_url = settings.database_url.get_secret_value()
    metrics = Metrics()
    migrations = discover_migrations(migrations_dir())
    routes = [
        *health.routes,
        *api_keys.routes,
        *catalog.routes,
        *catalog.public_routes,
        *customers.routes,
        *invoices.routes,
        *meter_events.routes,
        *checkout.routes,
        *discounts.routes,
        *events.routes,
        *reports.routes,
        *teams.routes,
        *usage.routes,
        *grants.routes,
        *webhook_endpoints.routes,
        *(console.routes if settings.console_on else []),
    ]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[AppState]:
        listener = Listener(database_url, metrics=metrics)
        key_cache = KeyCache(settings.api_key_cache_seconds, listener)
        token_index = TokenIndex(listener)
        entitlement_cache = EntitlementCache(
            settings.entitlement_cache_size,
            settings.entitlement_cache_seconds,
            listener,
            metrics=metrics,
        )
        listening = asyncio.create_task(listener.start())  # its connection opens beside the pool's
        try:
            pool = await create_pool(
                database_url,
                min_size=settings.database_pool_min,
                max_size=settings.database_pool_max,
                publishes_usage=True,
            )
        except BaseException:
            await asyncio.gather(listening, return_exceptions=True)
            await listener.stop()
            raise
        await listening
        metrics.watch_pool(pool)
        reads = await _read_routing(settings, pool, metrics)
        usage_publisher = UsagePublisher(pool, entitlement_cache.origin)
        usage_publisher.start()
        stripe = StripeGateway.from_settings(settings)
        outbound = OutboundPolicy.from_settings(settings, resolver)
        webhooks = WebhookClient(outbound)
        worker, tasks = _start_background_work(settings, pool, stripe, metrics, webhooks)
        logger.info("app.started", env=settings.env.value, stripe=stripe is not None)
        if freeze_heap:
            gc.collect()
            gc.freeze()
        try:
            yield AppState(
                settings=settings,
                pool=pool,
                reads=reads,
                metrics=metrics,
                migrations=migrations,
                stripe=stripe,
                worker=worker,
                clock=clock,
                key_cache=key_cache,
                entitlement_cache=entitlement_cache,
                usage_publisher=usage_publisher,
                token_index=token_index,
                limits=limits,
                outbound=outbound,
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if stripe is not None:
                await stripe.close()
            await webhooks.aclose()
            await usage_publisher.stop()
            await asyncio.gather(listener.stop(), reads.stop())
            await pool.close()
            logger.info("app.stopped")

    limits = _limits(settings)
    cors_routes = [
        CorsRoute.of(route.path, route.methods or (), public=route in catalog.public_routes)
        for route in routes
        if route in catalog.public_routes or accepts_customer_token(route.endpoint)
    ]
    route_of = route_template_lookup({route.endpoint: route.path for route in routes})
    app = BillingApp(
        IndexedRouter(routes, lifespan=lifespan),
        functools.partial(
            RequestMiddleware,
            metrics=metrics,
            route_of=route_of,
            max_bytes=settings.max_body_bytes,
            handlers=problems.exception_handlers(),
        ),
    )
    app.add_middleware(CorsMiddleware, origins=settings.cors_origins, routes=cors_routes)
    return app


async def _read_routing(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> ReadRouting:
    """Lag-tolerant reads: on the replica when `BILLING_DATABASE_READ_URL` is set, else on the
    primary. The replica's pool opens connections as reads need them, so a replica that is down
    at start-up delays nothing: reads go to the primary until a probe finds it."""
    replica = None
    if settings.database_read_url is not None:
        replica = await create_pool(
            settings.database_read_url.get_secret_value(),
            min_size=0,
            max_size=settings.database_pool_max,
            connect_timeout=REPLICA_CONNECT_TIMEOUT,
        )
    reads = ReadRouting(
        pool, replica, max_lag=settings.read_replica_max_lag_seconds, metrics=metrics
    )
    await reads.start()
    return reads


def _limits(settings: Settings) -> Limits:
    """Per-key buckets, failed-attempt windows and the per-address limit of public routes."""
    per_key = (
        TokenBuckets(
            settings.rate_limit_per_key, settings.rate_limit_burst or settings.rate_limit_per_key
        )
        if settings.rate_limit_per_key > 0
        else None
    )
    public_rate = settings.rate_limit_public_per_address
    return Limits(
        per_key=per_key,
        failures=FailureWindows(settings.auth_failures_per_minute),
        per_address=TokenBuckets(public_rate, 2 * public_rate) if public_rate > 0 else None,
    )


class BillingApp(Starlette):
    """Starlette whose middleware stack is `RequestMiddleware` around the router, which also
    holds the exception handlers: Starlette's own stack adds a server-error and an exception
    layer around it, two more calls and `send` wrappers on every request. Middleware added
    the usual way (`add_middleware`) sits between the two, so its answers get a request id,
    a log line and the problem handlers too."""

    def __init__(self, router: IndexedRouter, stack: Callable[[ASGIApp], ASGIApp]) -> None:
        super().__init__()
        self.router = router
        self._stack = stack

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return self._stack(app)


def _start_background_work(
    settings: Settings,
    pool: asyncpg.Pool,
    stripe: StripeGateway | None,
    metrics: Metrics,
    webhooks: WebhookClient,
) -> tuple[PollingWorker | None, list[asyncio.Task[None]]]:
    """Outgoing webhooks, emails and the job scheduler always; Stripe event processing when
    Stripe is configured. Returns the Stripe event worker, which intake wakes."""
    if not settings.worker_enabled:
        return None, []
    deliveries = PollingWorker("outgoing-webhooks", DeliveryWorker(pool, webhooks).deliver_due)
    emails = PollingWorker("emails", EmailWorker(pool, settings).send_due)
    scheduler = run_scheduler(pool, build_jobs(settings, pool, stripe))
    tasks = [
        asyncio.create_task(deliveries.run(), name="outgoing-webhooks"),
        asyncio.create_task(emails.run(), name="emails"),
        asyncio.create_task(scheduler, name="jobs"),
    ]
    if stripe is None:
        return None, tasks
    processor = EventProcessor(
        pool, stripe, max_attempts=settings.webhook_max_attempts, metrics=metrics
    )
    events = PollingWorker("stripe-events", processor.process_due)
    tasks.append(asyncio.create_task(events.run(), name="stripe-events"))
    meters = PollingWorker("meter-events", MeterEventDelivery(pool, stripe).deliver_due)
    tasks.append(asyncio.create_task(meters.run(), name="meter-events"))
    return events, tasks


def app_from_environment() -> Starlette:
    """Uvicorn's factory for each worker process: settings from the environment, logs set up."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format, cache_loggers=True)
    return create_app(settings, freeze_heap=True)
