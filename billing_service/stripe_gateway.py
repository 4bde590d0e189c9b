"""The only module that talks to Stripe: typed calls in, our errors out, every mutation logged.

Each mutation carries an idempotency key chosen by the caller from our own row ids, so a retry
(the SDK's own bounded retries, or ours after a crash) can never create a second object. Keys
travel in an HTTP header and in our logs: they are printable ASCII, at most 255 characters, and
never carry personal data (a digest stands in for customer values).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import stripe
import structlog

from billing_service.config import Settings
from billing_service.db.pool import Connection
from billing_service.errors import (
    BillingError,
    FieldError,
    PaymentFailed,
    StripeNotConfigured,
    StripeRequestFailed,
    StripeUnavailable,
    ValidationFailed,
)
from billing_service.stripe_invoices import StripeInvoice, parse_invoice
from billing_service.stripe_objects import (
    StripeCheckoutSession,
    StripeSubscription,
    StripeSubscriptionItem,
    parse_checkout_session,
    parse_schedule,
    parse_subscription,
)

ResultT = TypeVar("ResultT", bound=stripe.StripeObject)

# What callers are told to wait after Stripe failed or was too slow.
RETRY_AFTER_SECONDS = 5

# What Stripe accepts as an Idempotency-Key (an HTTP header value of at most 255 characters).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")

# How Stripe refuses a meter event whose identifier it has already counted.
_DUPLICATE_METER_EVENT = re.compile(r"already exists with identifier")

logger = structlog.get_logger(__name__)


def stripe_answered(error: BaseException) -> bool:
    """Whether a failed call got an answer from Stripe that Stripe keeps under its idempotency
    key (every answer but 409 and 429, which are given before the request runs): repeating the
    key would only replay that answer for 24 hours, so a new attempt needs a new key. Without an
    answer (a timeout, a broken connection) the outcome is unknown and the key must be reused."""
    cause = error.__cause__
    return (
        isinstance(cause, stripe.StripeError)
        and cause.http_status is not None
        and cause.http_status not in (409, 429)
    )


def translate_stripe_error(exc: stripe.StripeError) -> BillingError:
    """Transient failures become 503 with Retry-After; refusals become 502 with Stripe's reason."""
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError | stripe.APIError):
        return StripeUnavailable(
            "Stripe did not complete the request; retry later.", retry_after=RETRY_AFTER_SECONDS
        )
    if isinstance(exc, stripe.CardError):
        return PaymentFailed(exc.user_message or "The payment was declined.")
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return StripeRequestFailed("Stripe refused the service's credentials.")
    return StripeRequestFailed(f"Stripe refused the request: {exc.user_message or exc.code}")


class StripeGateway:
    """Stripe operations the service needs, each returning plain values."""

    def __init__(
        self,
        client: stripe.StripeClient,
        http_client: stripe.HTTPXClient,
        *,
        connections_held: int = 1,
        automatic_tax: bool = False,
    ) -> None:
        self._client = client
        self._automatic_tax = automatic_tax  # Stripe Tax (BILLING_STRIPE_TAX)
        self._http_client = http_client
        self._connection_slots = asyncio.Semaphore(connections_held)

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeGateway | None:
        """A gateway for the configured key and API base, or None when no key is set."""
        if settings.stripe_secret_key is None:
            return None
        # The SDK retries connection failures, timeouts, 409s and 5xx (not 429s) with backoff,
        # reusing the idempotency key, so one call takes at most (retries + 1) x timeout plus
        # the backoff between attempts (at most 0.5 s, 1 s, 2 s, ...).
        http_client = stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)
        client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            base_addresses={"api": str(settings.stripe_api_base).rstrip("/")},
            stripe_version=settings.stripe_api_version,
            http_client=http_client,
            max_network_retries=settings.stripe_max_network_retries,
        )
        # Half the pool at most may wait on Stripe; the rest stays with the hot path.
        return cls(
            client,
            http_client,
            connections_held=max(1, settings.database_pool_max // 2),
            automatic_tax=settings.stripe_tax,
        )

    async def close(self) -> None:
        await self._http_client.close_async()  # type: ignore[no-untyped-call]

    @asynccontextmanager
    async def holding_connection(self, pool: asyncpg.Pool) -> AsyncIterator[Connection]:
        """A pool connection for work that keeps it while calling Stripe (a lock held around a
        fetch and its write). Only so many are lent at once, so a slow Stripe can never take
        the pool away from usage checks, tracks and webhook intake; the others wait here,
        holding nothing."""
        async with self._connection_slots, pool.acquire() as conn:
            yield conn

    async def _call(
        self,
        operation: str,
        method: Callable[..., Awaitable[ResultT]],
        *args: object,
        idempotency_key: str | None = None,
    ) -> ResultT:
        """Run one Stripe call, logging it (with Stripe's request id) and translating failures."""
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise ValueError(f"{operation}: an idempotency key is 1-255 printable ASCII characters")
        options = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
        try:
            result = await method(*args, options=options)
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

    # Catalog

    async def create_product(
        self, *, name: str, description: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"name": name, "metadata": metadata}
        if description:  # Stripe refuses an empty description on create
            params["description"] = description
        products = self._client.v1.products
        product = await self._call(
            "product.create", products.create_async, params, idempotency_key=idempotency_key
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
        params = {"name": name, "description": description, "active": active, "metadata": metadata}
        await self._call(
            "product.update",
            self._client.v1.products.update_async,
            product_id,
            params,
            idempotency_key=idempotency_key,
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
        prices = self._client.v1.prices
        price = await self._call(
            "price.create", prices.create_async, params, idempotency_key=idempotency_key
        )
        return str(price.id)

    async def update_price(
        self, price_id: str, *, active: bool, lookup_key: str | None, idempotency_key: str
    ) -> None:
        """Archive or restore a price; a live price also reclaims its lookup key."""
        params: dict[str, Any] = {"active": active}
        if lookup_key is not None:
            params |= {"lookup_key": lookup_key, "transfer_lookup_key": True}
        await self._call(
            "price.update",
            self._client.v1.prices.update_async,
            price_id,
            params,
            idempotency_key=idempotency_key,
        )

    # Billing meters: the meter of a billed feature, its metered prices, usage reported to it

    async def create_meter(
        self, *, display_name: str, event_name: str, idempotency_key: str
    ) -> str:
        """A meter summing the `value` of events named `event_name`, per Stripe customer id."""
        params: dict[str, Any] = {
            "display_name": display_name,
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
        meters = self._client.v1.billing.meters
        meter = await self._call(
            "billing.meter.create", meters.create_async, params, idempotency_key=idempotency_key
        )
        return str(meter.id)

    async def find_meter(self, event_name: str) -> str | None:
        """The active meter for `event_name`, if the account has one: Stripe allows one per
        event name, so a catalog applied again from a fresh database adopts it."""
        page = await self._call(
            "billing.meter.list",
            self._client.v1.billing.meters.list_async,
            {"status": "active", "limit": 100},
        )
        return next((str(m.id) for m in page.data if m.event_name == event_name), None)

    async def create_metered_price(
        self,
        *,
        product_id: str,
        meter_id: str,
        unit_amount: Decimal,
        currency: str,
        interval: str,
        lookup_key: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> str:
        """A recurring price billed on what the meter summed over each period; sub-cent unit
        amounts go as `unit_amount_decimal`."""
        params: dict[str, Any] = {
            "product": product_id,
            "currency": currency,
            "unit_amount_decimal": format(unit_amount.normalize(), "f"),
            "recurring": {"interval": interval, "usage_type": "metered", "meter": meter_id},
            "billing_scheme": "per_unit",
            "lookup_key": lookup_key,
            "transfer_lookup_key": True,
            "metadata": metadata,
        }
        prices = self._client.v1.prices
        price = await self._call(
            "price.create", prices.create_async, params, idempotency_key=idempotency_key
        )
        return str(price.id)

    async def create_meter_event(
        self,
        *,
        event_name: str,
        stripe_customer_id: str,
        value: int,
        identifier: str,
        timestamp: int,
        idempotency_key: str,
    ) -> bool:
        """Report `value` units; Stripe counts an `identifier` once, however often it is sent.
        False when Stripe already had the identifier (it refuses the repeat with a 400): the
        units were delivered before, by an attempt whose answer was lost."""
        params: dict[str, Any] = {
            "event_name": event_name,
            "identifier": identifier,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
        }
        events = self._client.v1.billing.meter_events
        try:
            await self._call(
                "billing.meter_event.create",
                events.create_async,
                params,
                idempotency_key=idempotency_key,
            )
        except StripeRequestFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.InvalidRequestError) and _DUPLICATE_METER_EVENT.search(
                str(cause.user_message or "")
            ):
                return False
            raise
        return True

    # Customers, Checkout and the portal

    async def create_customer(
        self, *, email: str | None, name: str | None, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"metadata": metadata}
        if email:
            params["email"] = email
        if name:
            params["name"] = name
        customers = self._client.v1.customers
        customer = await self._call(
            "customer.create", customers.create_async, params, idempotency_key=idempotency_key
        )
        return str(customer.id)

    async def update_customer(
        self, customer_id: str, *, email: str | None, name: str | None, idempotency_key: str
    ) -> None:
        await self._call(
            "customer.update",
            self._client.v1.customers.update_async,
            customer_id,
            {"email": email or "", "name": name or ""},
            idempotency_key=idempotency_key,
        )

    async def create_checkout_session(
        self,
        *,
        customer: str,
        price: str,
        quantity: int,
        mode: str,
        success_url: str,
        cancel_url: str,
        client_reference_id: str,
        metadata: dict[str, str],
        trial_days: int,
        allow_promotion_codes: bool,
        idempotency_key: str,
        metered_prices: list[str] | None = None,
        promotion_code: str | None = None,
    ) -> StripeCheckoutSession:
        """`promotion_code` is Stripe's id of a code applied up front (Stripe refuses it along
        with `allow_promotion_codes`). With Stripe Tax on, Checkout calculates tax from the
        billing address it requires, collects tax ids, and saves both on the customer."""
        params: dict[str, Any] = {
            "mode": mode,
            "customer": customer,
            # Metered prices take no quantity: Stripe bills what their meters summed.
            "line_items": [
                {"price": price, "quantity": quantity},
                *({"price": metered} for metered in metered_prices or []),
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "metadata": metadata,
        }
        if allow_promotion_codes:
            params["allow_promotion_codes"] = True
        if promotion_code is not None:
            params["discounts"] = [{"promotion_code": promotion_code}]
        if self._automatic_tax:
            params["automatic_tax"] = {"enabled": True}
            params["tax_id_collection"] = {"enabled": True}
            params["billing_address_collection"] = "required"
            # An existing customer's address and name are where tax and tax ids are kept.
            params["customer_update"] = {"address": "auto", "name": "auto"}
        if mode == "subscription":
            params["subscription_data"] = {"metadata": metadata}
            if trial_days:
                params["subscription_data"]["trial_period_days"] = trial_days
        else:
            params["payment_intent_data"] = {"metadata": metadata}
        sessions = self._client.v1.checkout.sessions
        session = await self._call(
            "checkout.session.create",
            sessions.create_async,
            params,
            idempotency_key=idempotency_key,
        )
        return parse_checkout_session(session.to_dict(for_json=True))

    async def retrieve_checkout_session(self, session_id: str) -> StripeCheckoutSession:
        sessions = self._client.v1.checkout.sessions
        session = await self._call(
            "checkout.session.retrieve", sessions.retrieve_async, session_id, None
        )
        return parse_checkout_session(session.to_dict(for_json=True))

    async def find_checkout_session(self, payment_intent: str) -> str | None:
        """The id of the Checkout session that made the payment, or None (not a checkout's)."""
        page = await self._call(
            "checkout.session.list",
            self._client.v1.checkout.sessions.list_async,
            {"payment_intent": payment_intent, "limit": 1},
        )
        return str(page.data[0].id) if page.data else None

    async def create_portal_session(self, *, customer: str, return_url: str) -> str:
        sessions = self._client.v1.billing_portal.sessions
        session = await self._call(
            "billing_portal.session.create",
            sessions.create_async,
            {"customer": customer, "return_url": return_url},
        )
        return str(session.url)

    # Discounts

    async def create_coupon(
        self, *, coupon_id: str, name: str | None, percent_off: Decimal | None,
        amount_off: int | None, currency: str | None, duration: str,
        duration_in_months: int | None, idempotency_key: str,
    ) -> str:  # fmt: skip
        """Create the coupon under our own id (so a retry cannot make a second one)."""
        params: dict[str, Any] = {"id": coupon_id, "duration": duration}
        if name is not None:
            params["name"] = name
        if percent_off is not None:
            params["percent_off"] = float(percent_off)
        if amount_off is not None:
            params["amount_off"] = amount_off
            params["currency"] = currency
        if duration_in_months is not None:
            params["duration_in_months"] = duration_in_months
        coupon = await self._call(
            "coupon.create",
            self._client.v1.coupons.create_async,
            params,
            idempotency_key=idempotency_key,
        )
        return str(coupon.id)

    async def create_promotion_code(
        self, *, code: str, coupon: str, max_redemptions: int | None,
        expires_at: datetime | None, idempotency_key: str,
    ) -> str:  # fmt: skip
        """Create a customer-facing code for a coupon; returns Stripe's promotion code id."""
        params: dict[str, Any] = {"code": code, "promotion": {"type": "coupon", "coupon": coupon}}
        if max_redemptions is not None:
            params["max_redemptions"] = max_redemptions
        if expires_at is not None:
            params["expires_at"] = int(expires_at.timestamp())
        promotion_code = await self._call(
            "promotion_code.create",
            self._client.v1.promotion_codes.create_async,
            params,
            idempotency_key=idempotency_key,
        )
        return str(promotion_code.id)

    # Subscriptions

    async def list_subscriptions(self, customer: str) -> list[StripeSubscription]:
        """Every subscription of the customer, ended ones included, each with its latest
        invoice (which says since when an unpaid one is past due)."""
        page = await self._call(
            "subscription.list",
            self._client.v1.subscriptions.list_async,
            {
                "customer": customer,
                "status": "all",
                "limit": 100,
                "expand": ["data.latest_invoice"],
            },
        )
        return [parse_subscription(item.to_dict(for_json=True)) for item in page.data]

    async def retrieve_subscription(self, subscription_id: str) -> StripeSubscription:
        found = await self._call(
            "subscription.retrieve",
            self._client.v1.subscriptions.retrieve_async,
            subscription_id,
            None,
        )
        return parse_subscription(found.to_dict(for_json=True))

    async def change_subscription_price(
        self,
        subscription_id: str,
        *,
        item_id: str,
        price: str,
        proration_behavior: str,
        idempotency_key: str,
        remove_items: Sequence[str] = (),
        add_prices: Sequence[str] = (),
    ) -> StripeSubscription:
        """Switch one item's price now, in the same update deleting `remove_items` and adding
        an item for each of `add_prices` (metered: no quantity, and no `clear_usage`, which
        does nothing for a price on a billing meter); the other items stay as they are. With an
        immediate invoice, it must be paid or nothing changes."""
        params: dict[str, Any] = {
            "items": [
                {"id": item_id, "price": price},
                *({"id": item, "deleted": True} for item in remove_items),
                *({"price": added} for added in add_prices),
            ],
            "proration_behavior": proration_behavior,
        }
        if proration_behavior == "always_invoice":
            params["payment_behavior"] = "error_if_incomplete"
        if self._automatic_tax:
            params["automatic_tax"] = {"enabled": True}
        return await self._update_subscription(subscription_id, params, idempotency_key)

    async def change_subscription_quantity(
        self,
        subscription_id: str,
        *,
        item_id: str,
        quantity: int,
        proration_behavior: str,
        idempotency_key: str,
    ) -> StripeSubscription:
        """Set one item's quantity (the seats) now. With `always_invoice` the prorated
        difference is invoiced at once and must be paid, or nothing changes."""
        params: dict[str, Any] = {
            "items": [{"id": item_id, "quantity": quantity}],
            "proration_behavior": proration_behavior,
        }
        if proration_behavior == "always_invoice":
            params["payment_behavior"] = "error_if_incomplete"
        if self._automatic_tax:
            params["automatic_tax"] = {"enabled": True}
        return await self._update_subscription(subscription_id, params, idempotency_key)

    async def set_cancel_at_period_end(
        self, subscription_id: str, *, cancel: bool, idempotency_key: str
    ) -> StripeSubscription:
        return await self._update_subscription(
            subscription_id, {"cancel_at_period_end": cancel}, idempotency_key
        )

    async def clear_cancel_at(
        self, subscription_id: str, *, idempotency_key: str
    ) -> StripeSubscription:
        """Undo a cancellation set for a date (`cancel_at`, as the portal sets it in flexible
        billing mode); an empty value unsets the field."""
        return await self._update_subscription(subscription_id, {"cancel_at": ""}, idempotency_key)

    async def resume_subscription(
        self, subscription_id: str, *, idempotency_key: str
    ) -> StripeSubscription:
        """Resume a paused subscription: a new billing period starts now and its invoice is
        charged; Stripe makes it active once that invoice is paid."""
        subscription = await self._call(
            "subscription.resume",
            self._client.v1.subscriptions.resume_async,
            subscription_id,
            None,
            idempotency_key=idempotency_key,
        )
        return parse_subscription(subscription.to_dict(for_json=True))

    async def _update_subscription(
        self, subscription_id: str, params: dict[str, Any], idempotency_key: str
    ) -> StripeSubscription:
        subscription = await self._call(
            "subscription.update",
            self._client.v1.subscriptions.update_async,
            subscription_id,
            params,
            idempotency_key=idempotency_key,
        )
        return parse_subscription(subscription.to_dict(for_json=True))

    async def cancel_subscription_now(
        self, subscription_id: str, *, idempotency_key: str
    ) -> StripeSubscription:
        subscription = await self._call(
            "subscription.cancel",
            self._client.v1.subscriptions.cancel_async,
            subscription_id,
            None,
            idempotency_key=idempotency_key,
        )
        return parse_subscription(subscription.to_dict(for_json=True))

    async def schedule_price_change(
        self,
        subscription_id: str,
        *,
        item_id: str,
        new_price: str,
        idempotency_key: str,
        drop_prices: Collection[str] = (),
        add_prices: Sequence[str] = (),
        quantity: int | None = None,
    ) -> tuple[str, datetime | None]:
        """Keep the subscription as it is until the item's period ends, then switch that item
        to `new_price` (and `quantity`, when given) without proration, leave out the items
        priced in `drop_prices` and add `add_prices`; returns the schedule's id and when the
        switch comes. A change of seats alone passes the item's own price as `new_price`.

        The phases are built from the subscription as Stripe has it now (every item, its
        discounts, a running trial), never from an earlier phase: the phase in effect keeps its
        start, and the schedule releases the subscription once it has switched.
        """
        subscription = await self.retrieve_subscription(subscription_id)
        schedules = self._client.v1.subscription_schedules
        if subscription.schedule_id is None:
            found = await self._call(
                "subscription_schedule.create",
                schedules.create_async,
                {"from_subscription": subscription_id},
                idempotency_key=f"{idempotency_key}:schedule",
            )
        else:
            found = await self._call(
                "subscription_schedule.retrieve",
                schedules.retrieve_async,
                subscription.schedule_id,
                None,
            )
        schedule = parse_schedule(found.to_dict(for_json=True))
        item = subscription.item(item_id)
        switch_at = item.current_period_end if item is not None else None
        phases = price_change_phases(
            subscription,
            start=schedule.current_phase_start,
            end=switch_at,
            item_id=item_id,
            new_price=new_price,
            drop_prices=drop_prices,
            add_prices=add_prices,
            quantity=quantity,
        )
        if self._automatic_tax:  # each phase's own setting, else Stripe's account default
            for phase in phases:
                phase["automatic_tax"] = {"enabled": True}
        params = {"end_behavior": "release", "phases": phases}
        await self._call(
            "subscription_schedule.update",
            schedules.update_async,
            schedule.id,
            params,
            idempotency_key=idempotency_key,
        )
        return schedule.id, switch_at

    async def release_schedule(self, schedule_id: str, *, idempotency_key: str) -> None:
        """Drop a pending scheduled change; the subscription carries on as it is."""
        await self._call(
            "subscription_schedule.release",
            self._client.v1.subscription_schedules.release_async,
            schedule_id,
            None,
            idempotency_key=idempotency_key,
        )

    # Invoices (parsed in stripe_invoices.py)

    async def list_invoices(
        self, customer: str, *, limit: int, starting_after: str | None
    ) -> tuple[list[StripeInvoice], bool]:
        """A page of the customer's invoices, newest first, and whether more follow."""
        params: dict[str, Any] = {"customer": customer, "limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        try:
            page = await self._call("invoice.list", self._client.v1.invoices.list_async, params)
        except StripeRequestFailed as exc:
            cause = exc.__cause__
            if (
                starting_after
                and isinstance(cause, stripe.StripeError)
                and (cause.code == "resource_missing")
            ):
                raise ValidationFailed(
                    [FieldError("cursor", "names no invoice in Stripe")]
                ) from exc
            raise
        invoices = [parse_invoice(item.to_dict(for_json=True)) for item in page.data]
        return invoices, bool(page.has_more)

    async def preview_invoice(self, customer: str, subscription: str) -> StripeInvoice | None:
        """The subscription's next invoice as Stripe would make it now, metered usage included;
        None when Stripe says none will come (the subscription ends with its period)."""
        params = {"customer": customer, "subscription": subscription}
        try:
            preview = await self._call(
                "invoice.create_preview", self._client.v1.invoices.create_preview_async, params
            )
        except StripeRequestFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.StripeError) and cause.code == "invoice_upcoming_none":
                return None
            raise
        return parse_invoice(preview.to_dict(for_json=True))

    # Webhook support: fresh objects and undelivered events

    async def retrieve_object(self, kind: str, object_id: str) -> dict[str, Any]:
        """The current state of a customer (a deleted one is `{"id", "object", "deleted": true}`),
        invoice, charge, dispute, product or price, as a plain mapping."""
        services: dict[str, Any] = {
            "customer": self._client.v1.customers,
            "invoice": self._client.v1.invoices,
            "charge": self._client.v1.charges,
            "dispute": self._client.v1.disputes,
            "product": self._client.v1.products,
            "price": self._client.v1.prices,
        }
        found = await self._call(f"{kind}.retrieve", services[kind].retrieve_async, object_id, None)
        data: dict[str, Any] = found.to_dict(for_json=True)
        return data

    async def list_undelivered_events(self, *, since: int) -> list[dict[str, Any]]:
        """Events Stripe could not deliver to our endpoint, created after `since` (epoch)."""
        page = await self._call(
            "event.list",
            self._client.v1.events.list_async,
            {"delivery_success": False, "created": {"gte": since}, "limit": 100},
        )
        return [event.to_dict(for_json=True) for event in page.data]


def _phase_items(
    items: tuple[StripeSubscriptionItem, ...],
    *,
    item_id: str,
    price: str | None = None,
    quantity: int | None = None,
) -> list[dict[str, Any]]:
    """Every item for a schedule phase: the one being changed gets `price` (and `quantity`);
    metered items carry no quantity (Stripe refuses one)."""
    phase_items: list[dict[str, Any]] = []
    for item in items:
        changed = item.id == item_id
        entry: dict[str, Any] = {"price": price if price and changed else item.price_id}
        if changed and quantity is not None:
            entry["quantity"] = quantity
        elif item.quantity is not None:
            entry["quantity"] = item.quantity
        if item.discounts:
            entry["discounts"] = [{"discount": discount} for discount in item.discounts]
        phase_items.append(entry)
    return phase_items


def price_change_phases(
    subscription: StripeSubscription,
    *,
    start: int,
    end: datetime | None,
    item_id: str,
    new_price: str,
    drop_prices: Collection[str] = (),
    add_prices: Sequence[str] = (),
    quantity: int | None = None,
) -> list[dict[str, Any]]:
    """The phase in effect (the subscription as it is, until `end`) and the one after it
    (the same with one item's price changed, the items priced in `drop_prices` left out and
    `add_prices` added), keeping discounts and a running trial."""
    discounts = [{"discount": discount} for discount in subscription.discounts]
    current: dict[str, Any] = {
        "items": _phase_items(subscription.items, item_id=item_id),
        "start_date": start,
    }
    if end is not None:
        current["end_date"] = int(end.timestamp())
    if subscription.status == "trialing" and subscription.trial_end is not None:
        current["trial_end"] = int(subscription.trial_end.timestamp())
    kept = tuple(item for item in subscription.items if item.price_id not in drop_prices)
    following: dict[str, Any] = {
        "items": [
            *_phase_items(kept, item_id=item_id, price=new_price, quantity=quantity),
            *({"price": added} for added in add_prices),
        ],
        "proration_behavior": "none",
    }
    if discounts:
        current["discounts"] = discounts
        following["discounts"] = discounts
    return [current, following]


def require_stripe(gateway: StripeGateway | None) -> StripeGateway:
    """The gateway, or the 503 problem that says Stripe is not configured."""
    if gateway is None:
        raise StripeNotConfigured(
            "This operation needs Stripe; set BILLING_STRIPE_SECRET_KEY to enable it."
        )
    return gateway
