"""The service's error tree, free of any web framework.

Every error a caller can see is a `BillingError`; each class carries the HTTP status, the title and
the stable problem `type` slug that `problems.py` renders as RFC 9457 problem+json:

    BillingError                      500 internal
    ├── MalformedRequest              400 malformed-request
    ├── InvalidWebhook                400 invalid-webhook
    ├── Unauthenticated               401 unauthenticated
    ├── Forbidden                     403 forbidden
    │   └── CrossOriginRefused        403 cross-origin-refused
    ├── NotFound                      404 not-found
    ├── MethodNotAllowed              405 method-not-allowed
    ├── PaymentFailed                 402 payment-failed
    ├── Conflict                      409 conflict
    │   ├── IdempotencyKeyReused      409 idempotency-key-reused
    │   ├── RequestInProgress         409 request-in-progress
    │   ├── SubscriptionExists        409 subscription-exists
    │   ├── NoActiveSubscription      409 no-active-subscription
    │   ├── SubscriptionPaused        409 subscription-paused
    │   ├── NoBillingAccount          409 no-billing-account
    │   ├── PriceNotSynced            409 price-not-synced
    │   ├── NoSeats                   409 no-seats
    │   ├── SeatsTaken                409 seats-taken
    │   └── SeatsInUse                409 seats-in-use
    ├── PayloadTooLarge               413 payload-too-large
    ├── UnsupportedMediaType          415 unsupported-media-type
    ├── ValidationFailed              422 validation-failed
    │   ├── CurrencyMismatch          422 currency-mismatch
    │   └── IdempotencyKeyMismatch    422 idempotency-key-mismatch
    ├── RateLimited                   429 rate-limited
    ├── StripeRequestFailed           502 stripe-request-failed
    └── ServiceUnavailable            503 service-unavailable
        ├── DatabaseUnavailable       503 database-unavailable
        ├── StripeNotConfigured       503 stripe-not-configured
        └── StripeUnavailable         503 stripe-unavailable
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

PROBLEM_TYPE_PREFIX = "urn:billing-service:problem:"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field of a request body or query: where it is and what is wrong."""

    field: str
    message: str


class BillingError(Exception):
    """Base of every error the service reports to callers."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    def extensions(self) -> dict[str, object]:
        """Extra problem members for subclasses that carry structured data."""
        return {}

    def headers(self) -> dict[str, str]:
        """Extra response headers the error needs (WWW-Authenticate, Allow, Retry-After)."""
        return {}


class MalformedRequest(BillingError):
    """The request body could not be parsed at all."""

    status, slug, title = 400, "malformed-request", "Malformed request"


class InvalidWebhook(BillingError):
    """A webhook that is not provably from Stripe, or not for this mode; nothing is stored."""

    status, slug, title = 400, "invalid-webhook", "Invalid webhook"


class Unauthenticated(BillingError):
    """No valid credential; deliberately says nothing about why."""

    status, slug, title = 401, "unauthenticated", "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="billing-service"'}


class PaymentFailed(BillingError):
    """Stripe declined the customer's payment; `detail` is Stripe's message for the customer."""

    status, slug, title = 402, "payment-failed", "Payment failed"


class Forbidden(BillingError):
    """A valid credential without the scope the route needs."""

    status, slug, title = 403, "forbidden", "Forbidden"


class CrossOriginRefused(Forbidden):
    """A browser preflight for a route or origin that may not be used cross-origin."""

    slug, title = "cross-origin-refused", "Cross-origin request refused"


class NotFound(BillingError):
    """No such route or resource."""

    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(BillingError):
    """The route exists but not for this method."""

    status, slug, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, detail: str | None = None, *, allow: str = "") -> None:
        super().__init__(detail)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class Conflict(BillingError):
    """The request conflicts with the current state of a resource."""

    status, slug, title = 409, "conflict", "Conflict"


class IdempotencyKeyReused(Conflict):
    """The Idempotency-Key was already used with a different request body."""

    slug, title = "idempotency-key-reused", "Idempotency key reused"


class RequestInProgress(Conflict):
    """The first request with this Idempotency-Key is still running; retry after Retry-After."""

    slug, title = "request-in-progress", "Request in progress"

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SubscriptionExists(Conflict):
    """The customer already has a subscription; change it instead of starting another."""

    slug, title = "subscription-exists", "Subscription already exists"


class NoActiveSubscription(Conflict):
    """The operation needs a live subscription and the customer has none."""

    slug, title = "no-active-subscription", "No active subscription"


class SubscriptionPaused(Conflict):
    """The subscription is paused: resume it before changing it."""

    slug, title = "subscription-paused", "Subscription paused"


class NoBillingAccount(Conflict):
    """The customer has never been to checkout, so Stripe does not know them yet."""

    slug, title = "no-billing-account", "No billing account"


class PriceNotSynced(Conflict):
    """The price exists in the catalog but has not reached Stripe yet."""

    slug, title = "price-not-synced", "Price not synced to Stripe"


class NoSeats(Conflict):
    """Members need seats: the customer's plan is not sold per seat."""

    slug, title = "no-seats", "No per-seat plan"


class SeatsTaken(Conflict):
    """Every seat bought is assigned; add seats or free one first."""

    slug, title = "seats-taken", "All seats are taken"

    def __init__(self, detail: str, *, seats: int, assigned: int) -> None:
        super().__init__(detail)
        self.seats, self.assigned = seats, assigned

    def extensions(self) -> dict[str, object]:
        return {"seats": self.seats, "assigned": self.assigned}


class SeatsInUse(Conflict):
    """Fewer seats than members hold: free seats before removing them."""

    slug, title = "seats-in-use", "Seats in use"

    def __init__(self, detail: str, *, assigned: int) -> None:
        super().__init__(detail)
        self.assigned = assigned

    def extensions(self) -> dict[str, object]:
        return {"assigned": self.assigned}


class PayloadTooLarge(BillingError):
    """The request body is larger than `BILLING_MAX_BODY_BYTES`."""

    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(BillingError):
    """The request body is not `application/json`."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(BillingError):
    """The body parsed but its fields are invalid; lists every bad field."""

    status, slug, title = 422, "validation-failed", "Validation failed"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or "The request has invalid fields.")
        self.errors = errors

    def extensions(self) -> dict[str, object]:
        return {"errors": [{"field": e.field, "message": e.message} for e in self.errors]}


class CurrencyMismatch(ValidationFailed):
    """The new price is in another currency than the subscription; Stripe cannot switch it."""

    slug, title = "currency-mismatch", "Currency mismatch"


class IdempotencyKeyMismatch(ValidationFailed):
    """The Idempotency-Key header and the body's idempotency_key name different keys."""

    slug, title = "idempotency-key-mismatch", "Idempotency keys disagree"


class RateLimited(BillingError):
    """Too many requests from this key, or too many failed logins from this address."""

    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StripeRequestFailed(BillingError):
    """Stripe refused a request we made; `detail` carries Stripe's reason."""

    status, slug, title = 502, "stripe-request-failed", "Stripe request failed"


class ServiceUnavailable(BillingError):
    """A dependency the request needs is down or not configured."""

    status, slug, title = 503, "service-unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached, or the schema is not migrated."""

    slug, title = "database-unavailable", "Database unavailable"


class StripeNotConfigured(ServiceUnavailable):
    """The route needs Stripe but no `BILLING_STRIPE_SECRET_KEY` is set."""

    slug, title = "stripe-not-configured", "Stripe is not configured"


class StripeUnavailable(ServiceUnavailable):
    """Stripe did not answer, rate-limited us or failed on its side, after our bounded retries."""

    slug, title = "stripe-unavailable", "Stripe is unavailable"
