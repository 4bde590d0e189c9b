"""What the lifespan sets up once and every request reads: typed access to the app state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict, TypeVar, cast

import asyncpg
from starlette.requests import Request

from billing_service.config import Settings
from billing_service.db.migrations import Migration
from billing_service.metrics import Metrics
from billing_service.outbound import OutboundPolicy
from billing_service.ratelimit import FailureWindows, TokenBuckets
from billing_service.read_replica import ReadRouting
from billing_service.services.entitlement_cache import EntitlementCache
from billing_service.services.key_cache import KeyCache
from billing_service.services.token_index import TokenIndex
from billing_service.services.usage_publisher import UsagePublisher
from billing_service.stripe_gateway import StripeGateway
from billing_service.worker import PollingWorker


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-process rate limits: per API key and, on routes that take no credential, per address
    (None: off); failed attempts per address."""

    per_key: TokenBuckets | None
    failures: FailureWindows
    per_address: TokenBuckets | None = None


class AppState(TypedDict):
    settings: Settings
    pool: asyncpg.Pool
    reads: ReadRouting
    metrics: Metrics
    migrations: list[Migration]
    stripe: StripeGateway | None
    worker: PollingWorker | None
    clock: Callable[[], datetime]
    key_cache: KeyCache
    entitlement_cache: EntitlementCache
    usage_publisher: UsagePublisher
    token_index: TokenIndex
    limits: Limits
    outbound: OutboundPolicy


def app_state(request: Request) -> AppState:
    return cast(AppState, request.scope["state"])


T = TypeVar("T")


async def lag_tolerant(request: Request, query: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run `query`, a read whose answer may be a few seconds old (lists, reports, usage
    history), on the read replica when one is configured, up and close enough behind; on the
    primary otherwise. Never for what writes, nor for reads a decision rests on (checks,
    tracks, checkout, webhook intake, the entitlement cache)."""
    return await app_state(request)["reads"].read(query)
