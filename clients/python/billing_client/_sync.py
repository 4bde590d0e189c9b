"""`BillingClient`: the operations of `_operations`, run with blocking httpx calls."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Self, TypeVar

import httpx

from billing_client._core import Outcome, Program, Retries, Send, client_headers
from billing_client._operations import MetadataValue, Operations
from billing_client.cache import EntitlementCache
from billing_client.models import (
    CheckoutSession,
    Customer,
    CustomerToken,
    Decision,
    Entitlements,
    Plan,
    PlanChange,
    PortalSession,
    Subscription,
    Tracked,
    UsageHistory,
)

T = TypeVar("T")


class BillingClient:
    """A blocking client of billing-service. Thread-safe; close it (or use `with`) when done.

    `api_key` is a `bsk_…` key (or a `bct_…` customer token, which reads only entitlements).
    `timeout` bounds each attempt; `max_retries` (or a whole `Retries`) bounds the retries of
    connection failures, 429 and 503. Pass `cache` to serve `entitlements` from memory.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_retries: int = 3,
        retries: Retries | None = None,
        cache: EntitlementCache | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._ops = Operations(retries or Retries(max_retries=max_retries), cache)
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        self._base_url = httpx.URL(base_url.rstrip("/"))
        self._headers = client_headers(api_key)
        self._timeout = timeout
        self.customers = Customers(self)
        self.subscription = Subscriptions(self)

    @property
    def cache(self) -> EntitlementCache | None:
        return self._ops.cache

    def _run(self, program: Program[T]) -> T:
        try:
            step = next(program)
            while True:
                if isinstance(step, Send):
                    step = program.send(self._send(step))
                else:
                    time.sleep(step.seconds)
                    step = program.send(None)
        except StopIteration as done:
            result: T = done.value
            return result

    def _send(self, step: Send) -> Outcome:
        call = step.call
        try:
            return self._http.request(
                call.method,
                self._base_url.join(call.path),
                json=call.json,
                params=call.params,
                headers=self._headers | call.headers,
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            return exc

    def check(self, customer_id: str, feature: str, amount: int = 1) -> Decision:
        """May the customer use `amount` of the feature now? Records nothing."""
        return self._run(self._ops.check(customer_id, feature, amount))

    def track(
        self,
        customer_id: str,
        feature: str,
        amount: int = 1,
        *,
        idempotency_key: str | None = None,
        cost: Decimal | float | str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> Tracked:
        """Check and record in one step. Without `idempotency_key` one is generated (and sent
        again by every retry), so a call is counted once however often it is retried."""
        program = self._ops.track(
            customer_id,
            feature,
            amount,
            idempotency_key=idempotency_key,
            cost=cost,
            metadata=metadata,
        )
        return self._run(program)

    def entitlements(self, customer_id: str, *, fresh: bool = False) -> Entitlements:
        """Every feature as the customer may use it now (from the cache unless `fresh`)."""
        return self._run(self._ops.entitlements(customer_id, fresh=fresh))

    def usage(
        self,
        customer_id: str,
        *,
        feature: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: str | None = None,
    ) -> UsageHistory:
        """Usage and cost per feature and bucket (`hour`, `day`, `week`, `month`, `period`)."""
        return self._run(self._ops.usage(customer_id, feature, start, end, granularity))

    def checkout(
        self,
        customer_id: str,
        price: str,
        *,
        success_url: str,
        cancel_url: str,
        quantity: int | None = None,
        trial_days: int | None = None,
        allow_promotion_codes: bool | None = None,
        idempotency_key: str | None = None,
    ) -> CheckoutSession:
        """A Stripe Checkout session for a price (by lookup key); retried with one key."""
        return self._run(
            self._ops.checkout(
                customer_id,
                price,
                success_url=success_url,
                cancel_url=cancel_url,
                quantity=quantity,
                trial_days=trial_days,
                allow_promotion_codes=allow_promotion_codes,
                idempotency_key=idempotency_key,
            )
        )

    def portal(self, customer_id: str, *, return_url: str) -> PortalSession:
        """A Stripe customer portal session."""
        return self._run(self._ops.portal(customer_id, return_url))

    def customer_token(self, customer_id: str, *, ttl_seconds: int | None = None) -> CustomerToken:
        """A short-lived token for a front end to read this customer's entitlements."""
        return self._run(self._ops.customer_token(customer_id, ttl_seconds))

    def plans(self) -> tuple[Plan, ...]:
        """Every active plan in display order, with prices and feature limits."""
        return self._run(self._ops.plans())

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Customers:
    """`client.customers`: create, update and read customers."""

    def __init__(self, client: BillingClient) -> None:
        self._client = client

    def upsert(
        self,
        customer_id: str,
        *,
        email: str,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Customer:
        """Create or update the customer under your own id."""
        program = self._client._ops.upsert_customer(customer_id, email, name, metadata)
        return self._client._run(program)

    def get(self, customer_id: str) -> Customer:
        return self._client._run(self._client._ops.get_customer(customer_id))


class Subscriptions:
    """`client.subscription`: read, change, cancel and resume a customer's subscription."""

    def __init__(self, client: BillingClient) -> None:
        self._client = client

    def get(self, customer_id: str) -> Subscription:
        return self._client._run(self._client._ops.get_subscription(customer_id))

    def change(self, customer_id: str, price: str) -> PlanChange:
        """Move to another recurring price: upgrades now, downgrades at the period end."""
        return self._client._run(self._client._ops.change_subscription(customer_id, price))

    def cancel(self, customer_id: str, *, at_period_end: bool = True) -> Subscription:
        return self._client._run(self._client._ops.cancel_subscription(customer_id, at_period_end))

    def resume(self, customer_id: str) -> Subscription:
        """Resume a paused subscription, or undo a pending cancellation."""
        return self._client._run(self._client._ops.resume_subscription(customer_id))
