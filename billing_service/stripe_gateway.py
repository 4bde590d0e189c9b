"""The only module that talks to Stripe: typed calls in, our errors out, every mutation logged.

Each mutation carries an idempotency key chosen by the caller from our own row ids, so a retry
(the SDK's own bounded retries, or ours after a crash) can never create a second object.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import stripe
import structlog

from billing_service.config import Settings
from billing_service.errors import (
    BillingError,
    StripeNotConfigured,
    StripeRequestFailed,
    StripeUnavailable,
)

ResultT = TypeVar("ResultT", bound=stripe.StripeObject)

# The SDK retries connection failures, 409s, 429s and 5xx with backoff, reusing the idempotency key.
MAX_NETWORK_RETRIES = 2
TIMEOUT_SECONDS = 20.0
RETRY_AFTER_SECONDS = 5

logger = structlog.get_logger(__name__)


def translate_stripe_error(exc: stripe.StripeError) -> BillingError:
    """Transient failures become 503 with Retry-After; refusals become 502 with Stripe's reason."""
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError | stripe.APIError):
        return StripeUnavailable(
            "Stripe did not complete the request; retry later.", retry_after=RETRY_AFTER_SECONDS
        )
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return StripeRequestFailed("Stripe refused the service's credentials.")
    return StripeRequestFailed(f"Stripe refused the request: {exc.user_message or exc.code}")


class StripeGateway:
    """Stripe operations the service needs, each returning plain values."""

    def __init__(self, client: stripe.StripeClient, http_client: stripe.HTTPXClient) -> None:
        self._client = client
        self._http_client = http_client

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeGateway | None:
        """A gateway for the configured key and API base, or None when no key is set."""
        if settings.stripe_secret_key is None:
            return None
        http_client = stripe.HTTPXClient(timeout=TIMEOUT_SECONDS)
        client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            base_addresses={"api": str(settings.stripe_api_base).rstrip("/")},
            stripe_version=settings.stripe_api_version,
            http_client=http_client,
            max_network_retries=MAX_NETWORK_RETRIES,
        )
        return cls(client, http_client)

    async def close(self) -> None:
        await self._http_client.close_async()  # type: ignore[no-untyped-call]

    async def _mutate(
        self, operation: str, idempotency_key: str, call: Callable[[], Awaitable[ResultT]]
    ) -> ResultT:
        try:
            result = await call()
        except stripe.StripeError as exc:
            logger.warning(
                "stripe.request_failed",
                operation=operation,
                idempotency_key=idempotency_key,
                stripe_request_id=exc.request_id,
                http_status=exc.http_status,
                code=exc.code,
            )
            raise translate_stripe_error(exc) from exc
        response = result.last_response
        logger.info(
            "stripe.request",
            operation=operation,
            object_id=getattr(result, "id", None),
            idempotency_key=idempotency_key,
            stripe_request_id=response.request_id if response else None,
        )
        return result

    async def create_product(
        self, *, name: str, description: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"name": name, "metadata": metadata}
        if description:  # Stripe refuses an empty description on create
            params["description"] = description
        product = await self._mutate(
            "product.create",
            idempotency_key,
            lambda: self._client.v1.products.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )
        return str(product.id)

    async def update_product(
        self,
        product_id: str,
        *,
        name: str,
        description: str,
        active: bool,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> None:
        params: dict[str, Any] = {
            "name": name,
            "description": description,
            "active": active,
            "metadata": metadata,
        }
        await self._mutate(
            "product.update",
            idempotency_key,
            lambda: self._client.v1.products.update_async(
                product_id,
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )

    async def create_price(
        self,
        *,
        product_id: str,
        amount: int,
        currency: str,
        interval: str | None,
        lookup_key: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> str:
        """Create a price owning `lookup_key`, taking it over from whichever price had it."""
        params: dict[str, Any] = {
            "product": product_id,
            "unit_amount": amount,
            "currency": currency,
            "lookup_key": lookup_key,
            "transfer_lookup_key": True,
            "metadata": metadata,
        }
        if interval is not None:
            params["recurring"] = {"interval": interval}
        price = await self._mutate(
            "price.create",
            idempotency_key,
            lambda: self._client.v1.prices.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )
        return str(price.id)

    async def update_price(
        self, price_id: str, *, active: bool, lookup_key: str | None, idempotency_key: str
    ) -> None:
        """Archive or restore a price; a live price also reclaims its lookup key."""
        params: dict[str, Any] = {"active": active}
        if lookup_key is not None:
            params |= {"lookup_key": lookup_key, "transfer_lookup_key": True}
        await self._mutate(
            "price.update",
            idempotency_key,
            lambda: self._client.v1.prices.update_async(
                price_id,
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )


def require_stripe(gateway: StripeGateway | None) -> StripeGateway:
    """The gateway, or the 503 problem that says Stripe is not configured."""
    if gateway is None:
        raise StripeNotConfigured(
            "This operation needs Stripe; set BILLING_STRIPE_SECRET_KEY to enable it."
        )
    return gateway
