"""A Python client of billing-service: check and track usage, read entitlements, open checkout.

    from billing_client import BillingClient

    billing = BillingClient("http://127.0.0.1:8000", api_key)
    if billing.check("user_42", "ai_calls"):
        billing.track("user_42", "ai_calls")

`AsyncBillingClient` has the same methods, awaited. Errors are `BillingError` subclasses.
"""

from billing_client._async import AsyncBillingClient
from billing_client._core import VERSION, Retries
from billing_client._sync import BillingClient
from billing_client.cache import EntitlementCache
from billing_client.errors import (
    BillingError,
    Conflict,
    ConnectionFailed,
    FieldError,
    Forbidden,
    InvalidRequest,
    InvalidWebhook,
    NotFound,
    PaymentFailed,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    UpstreamFailed,
)
from billing_client.models import (
    CheckoutSession,
    Customer,
    CustomerToken,
    Decision,
    Entitlement,
    Entitlements,
    Plan,
    PlanChange,
    PortalSession,
    Subscription,
    Tracked,
    UsageHistory,
)
from billing_client.webhooks import WebhookEvent, verify_webhook

__version__ = VERSION
__all__ = [
    "AsyncBillingClient",
    "BillingClient",
    "BillingError",
    "CheckoutSession",
    "Conflict",
    "ConnectionFailed",
    "Customer",
    "CustomerToken",
    "Decision",
    "Entitlement",
    "EntitlementCache",
    "Entitlements",
    "FieldError",
    "Forbidden",
    "InvalidRequest",
    "InvalidWebhook",
    "NotFound",
    "PaymentFailed",
    "Plan",
    "PlanChange",
    "PortalSession",
    "RateLimited",
    "Retries",
    "ServerError",
    "Subscription",
    "Tracked",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "UpstreamFailed",
    "UsageHistory",
    "WebhookEvent",
    "verify_webhook",
]
