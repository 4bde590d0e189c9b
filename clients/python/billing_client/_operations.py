"""Every API operation as a program of `_core` steps: the request, its retries, its result.

Both clients call these and only run the steps, so a route's shape, its idempotency key and its
effect on the entitlement cache are written once, here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote

from billing_client import models
from billing_client._core import Call, Program, Retries, exchange, new_idempotency_key
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
MetadataValue = str | int | float | bool | None


def customer_path(customer_id: str, *rest: str) -> str:
    return "/".join(("/v1/customers", quote(customer_id, safe=""), *rest))


class Operations:
    """Builds each operation's program for a client's retry policy and cache."""

    def __init__(self, retries: Retries, cache: EntitlementCache | None) -> None:
        self.retries = retries
        self.cache = cache
        self.rng = random.Random()  # noqa: S311 - jitter, not a secret

    def _send(self, call: Call[T]) -> Program[T]:
        return exchange(call, self.retries, self.rng)

    def _forget(self, customer_id: str) -> None:
        if self.cache is not None:
            self.cache.evict(customer_id)

    def check(self, customer_id: str, feature: str, amount: int) -> Program[Decision]:
        body = {"customer_id": customer_id, "feature": feature, "amount": amount}
        return (yield from self._send(Call("POST", "/v1/usage/check", models.decision, body)))

    def track(
        self,
        customer_id: str,
        feature: str,
        amount: int,
        *,
        idempotency_key: str | None,
        cost: Decimal | float | str | None,
        metadata: Mapping[str, MetadataValue] | None,
    ) -> Program[Tracked]:
        key = idempotency_key or new_idempotency_key()
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "feature": feature,
            "amount": amount,
            "idempotency_key": key,
        }
        if cost is not None:
            body["cost"] = str(cost) if isinstance(cost, Decimal) else cost
        if metadata is not None:
            body["metadata"] = dict(metadata)
        result: Tracked = yield from self._send(
            Call("POST", "/v1/usage/track", lambda b: models.tracked(b, key), body)
        )
        if result.recorded:
            self._forget(customer_id)
        return result

    def entitlements(self, customer_id: str, *, fresh: bool) -> Program[Entitlements]:
        cache = self.cache
        if cache is not None and not fresh and (hit := cache.get(customer_id)) is not None:
            return hit
        generation = cache.generation() if cache is not None else None
        result: Entitlements = yield from self._send(
            Call("GET", customer_path(customer_id, "entitlements"), models.entitlements)
        )
        if cache is not None:
            cache.put(result, generation)
        return result

    def usage(
        self,
        customer_id: str,
        feature: str | None,
        start: datetime | None,
        end: datetime | None,
        granularity: str | None,
    ) -> Program[UsageHistory]:
        params = {
            name: value
            for name, value in (
                ("feature", feature),
                ("from", start.isoformat() if start else None),
                ("to", end.isoformat() if end else None),
                ("granularity", granularity),
            )
            if value is not None
        }
        call = Call("GET", customer_path(customer_id, "usage"), models.usage_history, None, params)
        return (yield from self._send(call))

    def upsert_customer(
        self,
        customer_id: str,
        email: str,
        name: str | None,
        metadata: Mapping[str, str] | None,
    ) -> Program[Customer]:
        body: dict[str, Any] = {"email": email}
        if name is not None:
            body["name"] = name
        if metadata is not None:
            body["metadata"] = dict(metadata)
        call = Call("PUT", customer_path(customer_id), models.customer, body)
        return (yield from self._send(call))

    def get_customer(self, customer_id: str) -> Program[Customer]:
        return (yield from self._send(Call("GET", customer_path(customer_id), models.customer)))

    def checkout(
        self,
        customer_id: str,
        price: str,
        *,
        success_url: str,
        cancel_url: str,
        quantity: int | None,
        trial_days: int | None,
        allow_promotion_codes: bool | None,
        idempotency_key: str | None,
    ) -> Program[CheckoutSession]:
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "price": price,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        optional = {
            "quantity": quantity,
            "trial_days": trial_days,
            "allow_promotion_codes": allow_promotion_codes,
        }
        body |= {name: value for name, value in optional.items() if value is not None}
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        call = Call("POST", "/v1/checkout/sessions", models.checkout_session, body, headers=headers)
        return (yield from self._send(call))

    def portal(self, customer_id: str, return_url: str) -> Program[PortalSession]:
        body = {"customer_id": customer_id, "return_url": return_url}
        call = Call("POST", "/v1/portal/sessions", models.portal_session, body)
        return (yield from self._send(call))

    def get_subscription(self, customer_id: str) -> Program[Subscription]:
        call = Call("GET", customer_path(customer_id, "subscription"), models.subscription)
        return (yield from self._send(call))

    def change_subscription(self, customer_id: str, price: str) -> Program[PlanChange]:
        path = customer_path(customer_id, "subscription", "change")
        call = Call("POST", path, models.plan_change, {"price": price}, replayable=False)
        result: PlanChange = yield from self._send(call)
        self._forget(customer_id)
        return result

    def cancel_subscription(self, customer_id: str, at_period_end: bool) -> Program[Subscription]:
        path = customer_path(customer_id, "subscription", "cancel")
        body = {"at_period_end": at_period_end}
        call = Call("POST", path, models.subscription, body, replayable=False)
        result: Subscription = yield from self._send(call)
        self._forget(customer_id)
        return result

    def resume_subscription(self, customer_id: str) -> Program[Subscription]:
        path = customer_path(customer_id, "subscription", "resume")
        call = Call("POST", path, models.subscription, replayable=False)
        result: Subscription = yield from self._send(call)
        self._forget(customer_id)
        return result

    def customer_token(self, customer_id: str, ttl_seconds: int | None) -> Program[CustomerToken]:
        body = {} if ttl_seconds is None else {"ttl_seconds": ttl_seconds}
        path = customer_path(customer_id, "tokens")
        return (yield from self._send(Call("POST", path, models.customer_token, body)))

    def plans(self) -> Program[tuple[Plan, ...]]:
        """Every active plan, following the pages."""
        plans: list[Plan] = []
        cursor: str | None = None
        while True:
            params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
            call = Call("GET", "/v1/plans", lambda b: models.page(b, models.plan), None, params)
            page: models.Page[Plan] = yield from self._send(call)
            plans += page.data
            if page.next_cursor is None:
                return tuple(plans)
            cursor = page.next_cursor
