"""Where the console's read-only pages read from: one function, so that those reads can move to
a read replica's pool in one place. Actions (replays, grants, syncs) use the primary pool."""

from __future__ import annotations

import asyncpg
from starlette.requests import Request

from billing_service.state import app_state


def reader(request: Request) -> asyncpg.Pool:
    """The pool page data is read from."""
    return app_state(request)["pool"]


def writer(request: Request) -> asyncpg.Pool:
    """The pool actions write through, and sessions are checked against (a revocation must
    take effect at once, not after a replica's lag)."""
    return app_state(request)["pool"]
