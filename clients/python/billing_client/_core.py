"""The client's one implementation, free of I/O: what to send, when to retry, how to read answers.

Each operation is a generator that yields `Send(call)` or `Sleep(seconds)` and is sent back the
`httpx.Response` (or the `httpx.TransportError`) of each `Send`; its return value is the result.
`BillingClient` runs these generators with blocking calls, `AsyncBillingClient` with awaits, so
both behave identically by construction.
"""

from __future__ import annotations

import email.utils
import logging
import random
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx

from billing_client.errors import BillingError, ConnectionFailed, UnexpectedResponse, error_for

T = TypeVar("T")
VERSION = "0.1.0"
logger = logging.getLogger("billing_client")

RETRIED_STATUSES = frozenset({429, 503})
# A 409 that says "the first request with this key is still running": ask again later.
IN_PROGRESS = "urn:billing-service:problem:request-in-progress"
# Failures that happen before any byte of the request can have reached the service.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class Retries:
    """How often and how long to retry connection failures, 429 and 503.

    The n-th retry waits `backoff * 2**n` seconds (at most `max_backoff`), scaled by a random
    factor between 0.5 and 1 so that clients do not retry in step; a `Retry-After` from the
    service is waited at least. An answer asking for longer than `max_retry_after` is raised
    at once rather than waited for.
    """

    max_retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before retry number `retry` (0-based), or None to give up."""
        if retry >= self.max_retries:
            return None
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        jittered = min(self.max_backoff, self.backoff * 2.0**retry) * (0.5 + rng.random() / 2)
        return max(jittered, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API request and how to read its successful answer.

    `replayable` says whether sending it twice is harmless (reads, upserts, requests carrying an
    idempotency key): only such calls are retried after a failure that may have come after the
    service received them (a reset or a read timeout).
    """

    method: str
    path: str
    read: Callable[[Any], T]
    json: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    replayable: bool = True


@dataclass(frozen=True, slots=True)
class Send:
    call: Call[Any]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Step = Send | Sleep
Outcome = httpx.Response | httpx.TransportError
Program = Generator[Step, Outcome | None, T]


def new_idempotency_key() -> str:
    """A fresh key for one logical request, reused by each of its retries."""
    return f"bc_{uuid.uuid4().hex}"


def exchange(call: Call[T], retries: Retries, rng: random.Random) -> Program[T]:
    """Send `call` until it succeeds, fails for good, or retries run out; its result."""
    retry = 0
    while True:
        outcome = yield Send(call)
        assert outcome is not None
        if isinstance(outcome, httpx.TransportError):
            failure: BillingError = ConnectionFailed(
                f"{call.method} {call.path.split('?')[0]}: {type(outcome).__name__}"
            )
            retry_after = None
            may_retry = call.replayable or isinstance(outcome, NOT_SENT)
        else:
            if outcome.is_success:
                return _read(call, outcome)
            failure = _problem(outcome)
            retry_after = failure.retry_after
            may_retry = outcome.status_code in RETRIED_STATUSES or (
                failure.type == IN_PROGRESS and call.replayable
            )
        wait = retries.delay(retry, retry_after, rng) if may_retry else None
        if wait is None:
            if isinstance(outcome, httpx.TransportError):
                raise failure from outcome
            raise failure
        logger.warning(
            "billing_client.retry",
            extra={"method": call.method, "status": failure.status, "wait_seconds": wait},
        )
        yield Sleep(wait)
        retry += 1


def _read(call: Call[T], response: httpx.Response) -> T:
    try:
        return call.read(response.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnexpectedResponse(
            f"{call.method} answered {response.status_code} with a body this client cannot read",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from exc


def _problem(response: httpx.Response) -> BillingError:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return error_for(
        response.status_code,
        body,
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def client_headers(api_key: str) -> dict[str, str]:
    """What every request carries."""
    return {
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": f"billing-client-python/{VERSION}",
    }
