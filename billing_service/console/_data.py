"""Where the console's pages read from. Lists and reports may be a few seconds old, so they
go to the read replica when one serves (`state.lag_tolerant`); a customer's page and an event's
page read the primary, because the operator has often just acted on them (a replay, a grant, a
re-sync) and the entitlements come through the primary's cache. Actions use the primary pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from starlette.requests import Request

from billing_service.state import app_state, lag_tolerant

T = TypeVar("T")


async def lagging(request: Request, query: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run `query`, a read for a list or a report, on the read replica when it is up and close
    enough behind, on the primary otherwise."""
    return await lag_tolerant(request, query)


def reader(request: Request) -> asyncpg.Pool:
    """The pool for page data that must be current."""
    return app_state(request)["pool"]


def writer(request: Request) -> asyncpg.Pool:
    """The pool actions write through, and sessions are checked against (a revocation must
    take effect at once, not after a replica's lag)."""
    return app_state(request)["pool"]
