"""Idempotency keys for Stripe mutations: the same key for retries of one attempt, a new key
for a new attempt once Stripe has answered with a failure.

Stripe keeps the first answer to a key for at least 24 hours, failures included (a 500 too, once
the request started to run), and replays it. A call that got no answer (a timeout, a broken
connection) may have been carried out, so it is repeated under the same key: a create is never
duplicated, and Stripe replays the outcome. A call Stripe answered with a failure would only get
that failure back under its key, so the next attempt appends `:retry:<n>` to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from billing_service.db import stripe_key_attempts as db
from billing_service.db.pool import Executor
from billing_service.errors import BillingError
from billing_service.stripe_gateway import stripe_answered

logger = structlog.get_logger(__name__)


def key_for(base_key: str, attempt: int) -> str:
    """The key sent on `attempt` (0 is the first, sent as `base_key` itself)."""
    return base_key if attempt == 0 else f"{base_key}:retry:{attempt}"


@asynccontextmanager
async def attempt_key(conn: Executor, base_key: str) -> AsyncIterator[str]:
    """The key for this attempt at the call named `base_key`. A failure Stripe answered moves
    the call on to a new key for the next attempt; any other failure keeps the key."""
    attempt = await db.select_attempt(conn, base_key)
    try:
        yield key_for(base_key, attempt)
    except BillingError as exc:
        if stripe_answered(exc):
            await db.move_on(conn, base_key, attempt)
            logger.info("stripe.key_moved_on", base_key=base_key, attempt=attempt + 1)
        raise
