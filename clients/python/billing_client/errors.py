"""Every error the client raises, as one tree so callers can catch a whole family:

    BillingError                  anything below; `status` is None when no answer came
    ├── InvalidRequest            400, 413, 415, 422 (`errors` lists the invalid fields)
    ├── Unauthorized              401
    ├── Forbidden                 403
    ├── PaymentFailed             402
    ├── NotFound                  404
    ├── Conflict                  409 (`type` tells which: idempotency-key-reused, …)
    ├── RateLimited               429 (`retry_after` in seconds)
    ├── ServerError               500 and other 5xx
    │   ├── UpstreamFailed        502 (Stripe refused the request)
    │   └── Unavailable           503 (`retry_after` in seconds)
    ├── ConnectionFailed          no answer: refused, reset or timed out
    ├── UnexpectedResponse        an answer that is not what the API documents
    └── InvalidWebhook            a delivery whose signature does not verify

A problem answered by the service (RFC 9457) is raised with its `type`, `title`, `status`,
`detail` and `request_id`, so a log line or a support ticket can name the exact request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBLEM_PREFIX = "urn:billing-service:problem:"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field of a request, as a 422 lists it."""

    field: str
    message: str


class BillingError(Exception):
    """Base of everything the client raises."""

    def __init__(
        self,
        detail: str,
        *,
        type: str | None = None,  # RFC 9457's name for it
        title: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        errors: tuple[FieldError, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.type = type
        self.title = title
        self.status = status
        self.request_id = request_id
        self.errors = errors
        self.retry_after = retry_after

    @property
    def slug(self) -> str | None:
        """The problem type without its URN prefix (`not-found`), or None."""
        if self.type is None:
            return None
        return self.type.removeprefix(PROBLEM_PREFIX)

    def __str__(self) -> str:
        parts = [f"{self.status} {self.slug}" if self.status else None, self.detail]
        text = ": ".join(p for p in parts if p)
        return f"{text} (request {self.request_id})" if self.request_id else text


class InvalidRequest(BillingError):
    """The request was refused as malformed or invalid; fix it before sending it again."""


class Unauthorized(BillingError):
    """No key, or an unknown, revoked or expired key or token."""


class Forbidden(BillingError):
    """The key is valid but lacks the scope the route needs."""


class PaymentFailed(BillingError):
    """Stripe declined a payment; `detail` is its message for the customer."""


class NotFound(BillingError):
    """No such customer, session or route."""


class Conflict(BillingError):
    """The request conflicts with the current state; `type` names the conflict."""


class RateLimited(BillingError):
    """Too many requests; retried automatically, raised once retries run out."""


class ServerError(BillingError):
    """The service failed (5xx)."""


class UpstreamFailed(ServerError):
    """Stripe refused the service's request (502)."""


class Unavailable(ServerError):
    """A dependency of the service is down (503); retried automatically first."""


class ConnectionFailed(BillingError):
    """No answer came: the connection failed or timed out, after every retry."""


class UnexpectedResponse(BillingError):
    """An answer the API does not document (not JSON, or missing fields)."""


class InvalidWebhook(BillingError):
    """A webhook delivery whose signature, timestamp or body does not verify."""


_BY_STATUS: dict[int, type[BillingError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    402: PaymentFailed,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    502: UpstreamFailed,
    503: Unavailable,
}


def error_for(
    status: int, body: Any, *, request_id: str | None, retry_after: float | None
) -> BillingError:
    """The exception for an error answer, from its problem document when it has one."""
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else BillingError)
    raw_errors = problem.get("errors")
    errors = tuple(
        FieldError(str(e.get("field", "")), str(e.get("message", "")))
        for e in (raw_errors if isinstance(raw_errors, list) else [])
        if isinstance(e, dict)
    )
    title = problem.get("title")
    detail = problem.get("detail") or title or f"HTTP {status}"
    return cls(
        str(detail),
        type=_str_or_none(problem.get("type")),
        title=_str_or_none(title),
        status=status,
        request_id=_str_or_none(problem.get("request_id")) or request_id,
        errors=errors,
        retry_after=retry_after,
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
