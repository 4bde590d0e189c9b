"""A fake of the slice of Stripe's API the service uses, built from Stripe's own sample objects.

Responses start from `fixtures/stripe_objects.json` (Stripe's published fixtures) so they have
Stripe's real shapes. Like Stripe, the fake honours idempotency keys: a repeated key returns the
first response and creates nothing, for 24 hours (`pass_time` moves the fake's clock); a key
that is not 1-255 printable ASCII characters cannot be sent as a header, and is refused.
Stripe also keeps a failed answer under its key for 24 hours once the request started to
run, 500s included, and the fake does the same (see `_kept_for_key`): a declined card (402), a
missing object (404), a server error (5xx) come back for the same key, whether they were set in
`failures` or given by the fake's own checks. Answers given before a request runs are not
kept: invalid requests (400), authentication (401), a concurrent request on the key (409) and
rate limits (429).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import respx

FIXTURES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "stripe_objects.json").read_text()
)


def stripe_object(resource: str, /, **overrides: Any) -> dict[str, Any]:
    """A copy of Stripe's sample `resource` object with some fields replaced."""
    return copy.deepcopy(FIXTURES[resource]) | overrides


def form(request: httpx.Request) -> dict[str, str]:
    """The form-encoded body Stripe received, flattened as sent (`metadata[key]` etc.)."""
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


def _nested(fields: dict[str, str], prefix: str) -> dict[str, str]:
    start = f"{prefix}["
    return {k[len(start) : -1]: v for k, v in fields.items() if k.startswith(start)}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    form: dict[str, str]
    idempotency_key: str | None


# How long Stripe keeps an idempotency key's first response: "at least 24 hours".
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
# What an HTTP header value can carry (printable ASCII), within Stripe's 255-character limit.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


# How Stripe refuses items of different intervals on a subscription in classic billing mode
# (flexible billing mode, from API version 2025-07-30.basil, accepts them).
MIXED_INTERVALS = (
    "Currency and interval fields must match across all plans on this subscription. "
    "Found mismatch in interval field."
)


def stripe_error(
    status: int, error_type: str, code: str | None = None, message: str | None = None
) -> httpx.Response:
    """An error response in Stripe's shape."""
    message = message or {"card_error": "Your card was declined."}.get(
        error_type, "Request failed."
    )
    return httpx.Response(
        status, json={"error": {"type": error_type, "code": code, "message": message}}
    )


class FakeStripe:
    """Stripe's objects kept in memory; every call is recorded in `calls`.

    `failures` maps a path to what Stripe should do instead of answering (an error response, or
    an exception such as `httpx.ConnectError` to play a network failure).
    """

    def __init__(self, router: respx.MockRouter) -> None:
        self.products: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.schedules: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.coupons: dict[str, dict[str, Any]] = {}
        self.promotion_codes: dict[str, dict[str, Any]] = {}
        self.undelivered_events: list[dict[str, Any]] = []
        # Customers whose card is declined (`decline_card`): an invoice they must pay fails.
        self.declining_customers: set[str] = set()
        # Invoices: metered usage per subscription item so far, and the tax a preview adds.
        self.metered_usage: dict[str, int] = {}
        self.preview_tax_percent = 0
        self.calls: list[Call] = []
        self.failures: dict[str, httpx.Response | Exception] = {}
        self._responses: dict[str, dict[str, Any]] = {}
        self._answered_failures: dict[str, tuple[httpx.Response, float]] = {}
        self._responded_at: dict[str, float] = {}
        self.elapsed = 0.0  # seconds the fake's clock is ahead (see `pass_time`)
        self._ids = itertools.count(1)
        routes = {
            ("POST", r"^/v1/products$"): self._create_product,
            ("POST", r"^/v1/products/(?P<object_id>[^/]+)$"): self._update_product,
            ("POST", r"^/v1/prices$"): self._create_price,
            ("POST", r"^/v1/prices/(?P<object_id>[^/]+)$"): self._update_price,
            ("POST", r"^/v1/customers$"): self._create_customer,
            ("POST", r"^/v1/customers/(?P<object_id>[^/]+)$"): self._update_customer,
            ("DELETE", r"^/v1/customers/(?P<object_id>[^/]+)$"): self._delete_customer,
            ("POST", r"^/v1/checkout/sessions$"): self._create_session,
            ("GET", r"^/v1/checkout/sessions/(?P<object_id>[^/]+)$"): self._get_session,
            ("GET", r"^/v1/checkout/sessions$"): self._list_sessions,
            ("POST", r"^/v1/billing_portal/sessions$"): self._create_portal_session,
            ("GET", r"^/v1/subscriptions$"): self._list_subscriptions,
            ("GET", r"^/v1/subscriptions/(?P<object_id>[^/]+)$"): self._get_subscription,
            ("POST", r"^/v1/subscriptions/(?P<object_id>[^/]+)/resume$"): (
                self._resume_subscription
            ),
            ("POST", r"^/v1/subscriptions/(?P<object_id>[^/]+)$"): self._update_subscription,
            ("DELETE", r"^/v1/subscriptions/(?P<object_id>[^/]+)$"): self._cancel_subscription,
            ("POST", r"^/v1/subscription_schedules$"): self._create_schedule,
            ("GET", r"^/v1/subscription_schedules/(?P<object_id>[^/]+)$"): self._get_schedule,
            ("POST", r"^/v1/subscription_schedules/(?P<object_id>[^/]+)$"): self._update_schedule,
            ("POST", r"^/v1/subscription_schedules/(?P<object_id>[^/]+)/release$"): (
                self._release_schedule
            ),
            ("GET", r"^/v1/customers/(?P<object_id>[^/]+)$"): self._getter(self.customers),
            ("GET", r"^/v1/charges/(?P<object_id>[^/]+)$"): self._getter(self.charges),
            ("GET", r"^/v1/invoices/(?P<object_id>[^/]+)$"): self._getter(self.invoices),
            ("GET", r"^/v1/disputes/(?P<object_id>[^/]+)$"): self._getter(self.disputes),
            ("GET", r"^/v1/products/(?P<object_id>[^/]+)$"): self._getter(self.products),
            ("GET", r"^/v1/prices/(?P<object_id>[^/]+)$"): self._getter(self.prices),
            ("GET", r"^/v1/events$"): self._list_events,
            ("POST", r"^/v1/coupons$"): self._create_coupon,
            ("POST", r"^/v1/promotion_codes$"): self._create_promotion_code,
        }
        routes |= self._invoice_routes()
        routes |= self._meter_routes()
        for (method, pattern), handler in routes.items():
            router.route(method=method, path__regex=pattern).mock(
                side_effect=self._unless_failing(handler)
            )

    def _unless_failing(self, handler: Any) -> Any:
        def respond(request: httpx.Request, **params: str) -> httpx.Response:
            key = request.headers.get("idempotency-key")
            if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
                self._record(request)
                return stripe_error(400, "invalid_request_error", "idempotency_key_invalid")
            kept = self._kept_failure(key)
            if kept is not None:
                self._record(request)
                return kept
            failure = self.failures.get(request.url.path)
            if failure is not None:
                self._record(request)
                if isinstance(failure, Exception):
                    raise failure
                self.keep_failure(key, failure)
                return failure
            response: httpx.Response = handler(request, **params)
            if response.is_error:
                self.keep_failure(key, response)
            return response

        return respond

    def keep_failure(self, key: str | None, failure: httpx.Response) -> None:
        """Keep a failed answer under its idempotency key for 24 hours, if Stripe would."""
        if key is not None and _kept_for_key(failure) and self._kept_failure(key) is None:
            self._answered_failures[key] = (failure, time.time() + self.elapsed)

    def _kept_failure(self, key: str | None) -> httpx.Response | None:
        """The failure Stripe still replays for the key, if any."""
        if key is None or key not in self._answered_failures:
            return None
        failure, answered_at = self._answered_failures[key]
        if time.time() + self.elapsed - answered_at >= IDEMPOTENCY_WINDOW_SECONDS:
            return None
        return failure

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids)}"

    def calls_to(self, method: str, path_prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def _record(self, request: httpx.Request) -> tuple[dict[str, str], str | None]:
        fields = form(request) if request.method == "POST" else dict(request.url.params)
        key = request.headers.get("idempotency-key")
        self.calls.append(Call(request.method, request.url.path, fields, key))
        return fields, key

    def pass_time(self, seconds: float) -> None:
        """Move the fake's clock on: idempotency keys older than 24 hours are forgotten."""
        self.elapsed += seconds

    def _replayable(self, key: str | None) -> bool:
        """Whether Stripe still holds a first response for the key (kept for 24 hours)."""
        if key is None or key not in self._responses:
            return False
        age = time.time() + self.elapsed - self._responded_at.get(key, 0.0)
        return age < IDEMPOTENCY_WINDOW_SECONDS

    def _remember(self, key: str, body: dict[str, Any]) -> None:
        """Keep the first response under its key, as Stripe does for 24 hours."""
        self._responses[key] = body
        self._responded_at[key] = time.time() + self.elapsed

    def _respond(self, key: str | None, build: Any) -> httpx.Response:
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        body: dict[str, Any] = build()
        if key is not None:
            self._remember(key, body)
        return httpx.Response(200, json=body)

    def _create_product(self, request: httpx.Request) -> httpx.Response:
        fields, key = self._record(request)

        def build() -> dict[str, Any]:
            product = stripe_object(
                "product",
                id=self._new_id("prod"),
                name=fields["name"],
                description=fields.get("description"),
                metadata=_nested(fields, "metadata"),
                default_price=None,
            )
            self.products[product["id"]] = product
            return product

        return self._respond(key, build)

    def _update_product(self, request: httpx.Request, object_id: str) -> httpx.Response:
        fields, _key = self._record(request)
        product = self.products.get(object_id)
        if product is None:
            return httpx.Response(404, json={"error": {"type": "invalid_request_error"}})
        product.update({k: v for k, v in fields.items() if "[" not in k})
        product["active"] = fields.get("active", str(product["active"]).lower()) == "true"
        product["metadata"] |= _nested(fields, "metadata")
        return httpx.Response(200, json=product)

    def _create_price(self, request: httpx.Request) -> httpx.Response:
        fields, key = self._record(request)

        def build() -> dict[str, Any]:
            recurring = _nested(fields, "recurring")
            decimal = fields.get("unit_amount_decimal", fields.get("unit_amount"))
            assert decimal is not None, "Stripe needs unit_amount or unit_amount_decimal"
            price = stripe_object(
                "price",
                id=self._new_id("price"),
                product=fields["product"],
                # Stripe sets unit_amount only when the amount is a whole number of minor units.
                unit_amount=int(decimal) if decimal.isdigit() else None,
                unit_amount_decimal=decimal,
                currency=fields["currency"],
                lookup_key=fields.get("lookup_key"),
                metadata=_nested(fields, "metadata"),
                type="recurring" if recurring else "one_time",
            )
            price["recurring"] = (
                price["recurring"]
                | {
                    "interval": recurring["interval"],
                    "usage_type": recurring.get("usage_type", "licensed"),
                    "meter": recurring.get("meter"),
                }
                if recurring
                else None
            )
            if fields.get("transfer_lookup_key") == "true":
                for other in self.prices.values():
                    if other["lookup_key"] == price["lookup_key"]:
                        other["lookup_key"] = None
            self.prices[price["id"]] = price
            return price

        return self._respond(key, build)

    def _update_price(self, request: httpx.Request, object_id: str) -> httpx.Response:
        fields, _key = self._record(request)
        price = self.prices.get(object_id)
        if price is None:
            return httpx.Response(404, json={"error": {"type": "invalid_request_error"}})
        if "active" in fields:
            price["active"] = fields["active"] == "true"
        if "lookup_key" in fields:
            price["lookup_key"] = fields["lookup_key"]
        return httpx.Response(200, json=price)

    # Customers

    def _create_customer(self, request: httpx.Request) -> httpx.Response:
        fields, key = self._record(request)

        def build() -> dict[str, Any]:
            customer = stripe_object(
                "customer",
                id=self._new_id("cus"),
                email=fields.get("email"),
                name=fields.get("name"),
                metadata=_nested(fields, "metadata"),
            )
            self.customers[customer["id"]] = customer
            return customer

        return self._respond(key, build)

    def _update_customer(self, request: httpx.Request, object_id: str) -> httpx.Response:
        fields, _key = self._record(request)
        customer = self.customers.get(object_id)
        if customer is None or customer.get("deleted"):
            return stripe_error(404, "invalid_request_error", "resource_missing")
        customer.update({k: v for k, v in fields.items() if k in {"email", "name"}})
        return httpx.Response(200, json=customer)

    def _delete_customer(self, request: httpx.Request, object_id: str) -> httpx.Response:
        self._record(request)
        if object_id not in self.customers:
            return stripe_error(404, "invalid_request_error", "resource_missing")
        return httpx.Response(200, json=self.delete_customer(object_id))

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        """Delete the customer as Stripe does (the API or the dashboard): every subscription of
        theirs is cancelled at once, and retrieving them returns only the deleted stub."""
        now = int(time.time())
        for subscription in self.subscriptions.values():
            if subscription["customer"] == customer_id and subscription["status"] not in {
                "canceled", "incomplete_expired"
            }:  # fmt: skip
                subscription.update(status="canceled", canceled_at=now, ended_at=now)
        self.customers[customer_id] = stripe_object("deleted_customer", id=customer_id)
        return self.customers[customer_id]

    # Checkout and the portal

    def _create_session(self, request: httpx.Request) -> httpx.Response:
        fields, key = self._record(request)
        customer = self.customers.get(fields["customer"])
        if not self._replayable(key) and (customer is None or customer.get("deleted")):
            return stripe_error(400, "invalid_request_error", "resource_missing")
        refusal = None if self._replayable(key) else self._session_discount_refusal(fields)
        if refusal is not None:
            return stripe_error(400, "invalid_request_error", refusal)

        def build() -> dict[str, Any]:
            session_id = self._new_id("cs_test")
            session = stripe_object(
                "checkout.session",
                id=session_id,
                url=f"https://checkout.stripe.com/c/pay/{session_id}",
                mode=fields["mode"],
                status="open",
                payment_status="unpaid",
                customer=fields["customer"],
                client_reference_id=fields.get("client_reference_id"),
                metadata=_nested(fields, "metadata"),
                expires_at=int(time.time()) + 86_400,
                subscription=None,
                payment_intent=None,
                success_url=fields["success_url"],
                cancel_url=fields["cancel_url"],
                allow_promotion_codes=fields.get("allow_promotion_codes") == "true" or None,
                discounts=[
                    {"coupon": None, "promotion_code": fields["discounts[0][promotion_code]"]}
                ]
                if "discounts[0][promotion_code]" in fields
                else None,
                automatic_tax={
                    "enabled": fields.get("automatic_tax[enabled]") == "true",
                    "liability": {"type": "self"} if "automatic_tax[enabled]" in fields else None,
                    "provider": None,
                    "status": None,
                },
                billing_address_collection=fields.get("billing_address_collection"),
                tax_id_collection={
                    "enabled": fields.get("tax_id_collection[enabled]") == "true",
                    "required": "never",
                },
            )
            session["_price"] = fields["line_items[0][price]"]
            session["_quantity"] = int(fields.get("line_items[0][quantity]", "1"))
            session["_more_prices"] = [
                fields[f"line_items[{n}][price]"]
                for n in itertools.takewhile(
                    lambda n: f"line_items[{n}][price]" in fields, itertools.count(1)
                )
            ]
            session["_trial_period_days"] = fields.get("subscription_data[trial_period_days]")
            self.sessions[session_id] = session
            return _public(session)

        return self._respond(key, build)

    def _session_discount_refusal(self, fields: dict[str, str]) -> str | None:
        """Stripe's checks of a session's discounts and tax fields, as error codes."""
        code_id = fields.get("discounts[0][promotion_code]")
        if code_id is not None:
            if fields.get("allow_promotion_codes") == "true":
                return "parameter_invalid_empty"  # Stripe: one or the other, never both
            code = self.promotion_codes.get(code_id)
            if code is None:
                return "resource_missing"
            if not code["active"]:
                return "promotion_code_invalid"
        if "tax_id_collection[enabled]" in fields and fields.get("customer_update[name]") != "auto":
            return "parameter_missing"  # an existing customer's name must be saveable
        return None

    def _get_session(self, request: httpx.Request, object_id: str) -> httpx.Response:
        self._record(request)
        session = self.sessions.get(object_id)
        if session is None:
            return stripe_error(404, "invalid_request_error", "resource_missing")
        return httpx.Response(200, json=_public(session))

    def _list_sessions(self, request: httpx.Request) -> httpx.Response:
        self._record(request)
        payment_intent = request.url.params.get("payment_intent")
        data = [
            _public(session)
            for session in self.sessions.values()
            if payment_intent is None or session["payment_intent"] == payment_intent
        ]
        return httpx.Response(
            200,
            json={"object": "list", "data": data, "has_more": False,
                  "url": "/v1/checkout/sessions"},
        )  # fmt: skip

    def complete_checkout(self, session_id: str, *, status: str = "active") -> dict[str, Any]:
        """Play the customer paying: the session completes and, in subscription mode, the
        subscription is created in Stripe; with `trial_period_days` it starts trialing, its
        trial ending that many days from now, and nothing is paid yet."""
        session = self.sessions[session_id]
        trial_days = int(session["_trial_period_days"] or 0)
        session.update(
            status="complete", payment_status="no_payment_required" if trial_days else "paid"
        )
        if session["mode"] == "subscription":
            subscription = self.add_subscription(
                session["customer"], session["_price"], quantity=session["_quantity"],
                status="trialing" if trial_days and status == "active" else status,
                trial_end=int(time.time()) + trial_days * 86_400 if trial_days else None,
            )  # fmt: skip
            for price in session["_more_prices"]:
                self.add_item(subscription, price)
            session["subscription"] = subscription["id"]
        else:
            session["payment_intent"] = self._new_id("pi")
        return session

    def add_subscription(
        self,
        customer: str,
        price: str,
        *,
        status: str = "active",
        quantity: int = 1,
        created: int | None = None,
        trial_end: int | None = None,
        discounts: list[str] | None = None,
    ) -> dict[str, Any]:
        """A subscription in Stripe with one item; `add_item` adds more. A trial makes the
        first period end with the trial, as Stripe does."""
        now = int(time.time())
        subscription_id = self._new_id("sub")
        period_end = trial_end or now + 30 * 86_400
        subscription = stripe_object(
            "subscription",
            id=subscription_id,
            customer=customer,
            status=status,
            created=created or now,
            start_date=created or now,
            cancel_at_period_end=False,
            cancel_at=None,
            canceled_at=None,
            ended_at=None,
            trial_start=now if trial_end else None,
            trial_end=trial_end,
            schedule=None,
            discounts=list(discounts or []),
            latest_invoice=None,
            pause_collection=None,
            pending_update=None,
            status_details=None,
            billing_mode={"type": "classic"},
        )
        item = subscription["items"]["data"][0]
        item.update(
            id=self._new_id("si"),
            subscription=subscription_id,
            quantity=quantity,
            current_period_start=now,
            current_period_end=period_end,
        )
        item["price"] = self.prices.get(price, item["price"]) | {"id": price}
        subscription["currency"] = item["price"]["currency"]
        self.subscriptions[subscription_id] = subscription
        return subscription

    def add_price(
        self,
        *,
        currency: str = "usd",
        amount: int | None = 500,
        metered: bool = False,
        interval: str = "month",
    ) -> str:
        """A price made in the Stripe dashboard, outside our catalog (an add-on, or a metered
        price billed on usage, which has no unit amount here and no quantity)."""
        price = stripe_object(
            "price", id=self._new_id("price"), currency=currency, lookup_key=None,
            unit_amount=None if metered else amount,
            unit_amount_decimal=None if metered else str(amount), type="recurring",
        )  # fmt: skip
        price["recurring"] = price["recurring"] | {
            "interval": interval,
            "usage_type": "metered" if metered else "licensed",
        }
        self.prices[price["id"]] = price
        return str(price["id"])

    def add_item(
        self, subscription: dict[str, Any], price: str, *, first: bool = False, quantity: int = 1
    ) -> dict[str, Any]:
        """Another item on the subscription, sharing its period; metered items carry no
        quantity. `first` lists it before the others. Like Stripe, refuses (ValueError) an
        interval other than the subscription's in classic billing mode."""
        items = subscription["items"]["data"]
        if _interval_refused(subscription, [*(i["price"] for i in items), self.prices[price]]):
            raise ValueError(MIXED_INTERVALS)
        item: dict[str, Any] = copy.deepcopy(items[0]) | {"id": self._new_id("si"), "discounts": []}
        item["price"] = self.prices[price]
        if item["price"]["recurring"]["usage_type"] == "metered":
            item.pop("quantity", None)
        else:
            item["quantity"] = quantity
        items.insert(0 if first else len(items), item)
        return item

    def portal_cancel(self, subscription_id: str) -> dict[str, Any]:
        """Play the customer cancelling in the portal, in flexible billing mode: Stripe sets
        `cancel_at` to the end of the period and leaves `cancel_at_period_end` false."""
        subscription = self.subscriptions[subscription_id]
        subscription["billing_mode"] = {"type": "flexible", "flexible": {}}
        subscription.update(
            cancel_at=_period_end(subscription), cancel_at_period_end=False,
            canceled_at=int(time.time()),
        )  # fmt: skip
        return subscription

    def renewal_payment_fails(self, subscription_id: str, *, attempted_at: int) -> dict[str, Any]:
        """Play a renewal whose charge failed at `attempted_at`: the invoice is finalized and
        attempted then, stays open, and the subscription turns past_due."""
        subscription = self.subscriptions[subscription_id]
        invoice = stripe_object(
            "invoice", id=self._new_id("in"), customer=subscription["customer"],
            status="open", attempted=True, attempt_count=1, billing_reason="subscription_cycle",
            collection_method="charge_automatically", created=attempted_at - 3600, due_date=None,
            status_transitions={"finalized_at": attempted_at, "marked_uncollectible_at": None,
                                "paid_at": None, "voided_at": None},
            parent={"type": "subscription_details", "quote_details": None,
                    "subscription_details": {"metadata": {}, "subscription": subscription_id}},
        )  # fmt: skip
        self.invoices[invoice["id"]] = invoice
        subscription.update(status="past_due", latest_invoice=invoice["id"])
        return invoice

    def _create_portal_session(self, request: httpx.Request) -> httpx.Response:
        fields, _key = self._record(request)
        if fields["customer"] not in self.customers:
            return stripe_error(400, "invalid_request_error", "resource_missing")
        session = stripe_object(
            "billing_portal.session",
            id=self._new_id("bps"),
            customer=fields["customer"],
            return_url=fields["return_url"],
            url=f"https://billing.stripe.com/p/session/{next(self._ids)}",
        )
        return httpx.Response(200, json=session)

    # Subscriptions and schedules

    def _expanded(self, subscription: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        """The subscription as sent, with `latest_invoice` expanded when asked for."""
        shown = copy.deepcopy(subscription)
        invoice = shown.get("latest_invoice")
        if "latest_invoice" in expand and isinstance(invoice, str) and invoice in self.invoices:
            shown["latest_invoice"] = copy.deepcopy(self.invoices[invoice])
        return shown

    def _list_subscriptions(self, request: httpx.Request) -> httpx.Response:
        self._record(request)
        customer = request.url.params.get("customer")
        expand = [e.removeprefix("data.") for k, e in request.url.params.multi_items()
                  if k.startswith("expand")]  # fmt: skip
        data = [
            self._expanded(s, expand)
            for s in self.subscriptions.values()
            if s["customer"] == customer
        ]
        return httpx.Response(
            200,
            json={"object": "list", "data": data, "has_more": False, "url": "/v1/subscriptions"},
        )

    def _get_subscription(self, request: httpx.Request, object_id: str) -> httpx.Response:
        self._record(request)
        subscription = self.subscriptions.get(object_id)
        if subscription is None:
            return stripe_error(404, "invalid_request_error", "resource_missing")
        expand = [e for k, e in request.url.params.multi_items() if k.startswith("expand")]
        return httpx.Response(200, json=self._expanded(subscription, expand))

    def decline_card(self, customer: str, *, declined: bool = True) -> None:
        """Play the customer's card being declined (or fixed again): every invoice Stripe
        tries to charge them fails with `card_declined`."""
        (self.declining_customers.add if declined else self.declining_customers.discard)(customer)

    def _update_subscription(self, request: httpx.Request, object_id: str) -> httpx.Response:
        """Items are changed or deleted (`deleted`) by id, or added (no id); the others stay.
        All in the subscription's currency, a metered item without a quantity, and in classic
        billing mode every item on one interval, or nothing changes. `cancel_at_period_end`
        and `cancel_at` set or clear a pending cancellation. With
        `proration_behavior=always_invoice`, the prorated difference of the licensed items is
        invoiced and charged at once; under `payment_behavior=error_if_incomplete`, a declined
        card answers 402 `card_declined` and the subscription stays as it was."""
        fields, key = self._record(request)
        subscription = self.subscriptions[object_id]
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        items, refusal = self._items_after(subscription, fields)
        if refusal == MIXED_INTERVALS:
            return stripe_error(400, "invalid_request_error", None, refusal)
        if refusal is not None:
            return stripe_error(400, "invalid_request_error", refusal)
        if fields.get("proration_behavior") == "always_invoice":
            lines = self._proration_lines(subscription, items)
            if sum(line["amount"] for line in lines) > 0:
                declined = subscription["customer"] in self.declining_customers
                if declined and fields.get("payment_behavior") == "error_if_incomplete":
                    return stripe_error(402, "card_error", "card_declined")
                invoice = self._proration_invoice(subscription, lines, paid=not declined)
                subscription["latest_invoice"] = invoice["id"]
        subscription["items"]["data"] = items
        if "cancel_at_period_end" in fields:
            cancel = fields["cancel_at_period_end"] == "true"
            subscription.update(
                cancel_at_period_end=cancel, cancel_at=_period_end(subscription) if cancel else None
            )
        if "cancel_at" in fields:
            wanted = fields["cancel_at"]
            subscription["cancel_at_period_end"] = False
            subscription["cancel_at"] = (
                None if wanted == ""
                else _period_end(subscription) if wanted == "min_period_end"
                else int(wanted)
            )  # fmt: skip
        if key is not None:
            self._remember(key, copy.deepcopy(subscription))
        return httpx.Response(200, json=subscription)

    def _items_after(
        self, subscription: dict[str, Any], fields: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The subscription's items once `items[n][...]` applied, or why Stripe refuses them."""
        items = [copy.deepcopy(i) for i in subscription["items"]["data"]]
        for n in itertools.count():
            wanted = {k.removeprefix(f"items[{n}][").rstrip("]"): v
                      for k, v in fields.items() if k.startswith(f"items[{n}][")}  # fmt: skip
            if not wanted:
                break
            item = next((i for i in items if i["id"] == wanted.get("id")), None)
            if item is None and "id" in wanted:
                return items, "resource_missing"
            if item is None:
                item = copy.deepcopy(items[0]) | {"id": self._new_id("si"), "discounts": []}
                items.append(item)
            if wanted.get("deleted") == "true":
                items.remove(item)
                continue
            price = self.prices.get(wanted.get("price", item["price"]["id"]))
            if price is None:
                return items, "resource_missing"
            if price["currency"] != subscription["currency"]:
                return items, "currency_mismatch"
            item["price"] = copy.deepcopy(price)
            metered = price["recurring"]["usage_type"] == "metered"
            if metered and "quantity" in wanted:
                return items, "parameter_invalid_integer"
            item.pop("quantity", None)
            if not metered:
                item["quantity"] = int(wanted.get("quantity", item.get("quantity") or 1))
        if _interval_refused(subscription, [i["price"] for i in items]):
            return items, MIXED_INTERVALS
        return items, None

    def _proration_lines(
        self, subscription: dict[str, Any], items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """What changing the licensed items to `items` costs for the rest of the period: the
        unused time of each old item credited, the remaining time of each new one charged."""
        now = int(time.time())
        lines = []
        old = {i["id"]: i for i in subscription["items"]["data"]}
        for item in items:
            before = old.get(item["id"])
            start, end = int(item["current_period_start"]), int(item["current_period_end"])
            left = max(0.0, (end - now) / max(1, end - start))
            for side, sign in ((before, -1), (item, 1)):
                if side is None or side["price"]["recurring"]["usage_type"] == "metered":
                    continue
                amount = sign * round((side["price"]["unit_amount"] or 0)
                                      * side.get("quantity", 1) * left)  # fmt: skip
                lines.append({"amount": amount, "price": side["price"]["id"],
                              "quantity": side.get("quantity", 1), "proration": True})  # fmt: skip
        changed = [line for line in lines if line["amount"]]
        return changed if sum(line["amount"] for line in changed) else []

    def _proration_invoice(
        self, subscription: dict[str, Any], lines: list[dict[str, Any]], *, paid: bool
    ) -> dict[str, Any]:
        """An invoice of the proration lines, finalized and charged now."""
        invoice_id = self._new_id("in")
        total = sum(line["amount"] for line in lines)
        invoice = stripe_object(
            "invoice", id=invoice_id, customer=subscription["customer"],
            status="paid" if paid else "open", billing_reason="subscription_update",
            amount_due=total, amount_paid=total if paid else 0, total=total, subtotal=total,
            currency=subscription["currency"], attempted=True, attempt_count=1,
            parent={"type": "subscription_details", "quote_details": None,
                    "subscription_details": {"metadata": {},
                                             "subscription": subscription["id"]}},
        )  # fmt: skip
        invoice["lines"] = {"object": "list", "data": lines, "has_more": False}
        self.invoices[invoice_id] = invoice
        return invoice

    def _resume_subscription(self, request: httpx.Request, object_id: str) -> httpx.Response:
        """Only a paused subscription resumes: a new period starts now (the default billing
        cycle anchor), its invoice is paid, and the subscription is active again."""
        _fields, key = self._record(request)
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        subscription = self.subscriptions[object_id]
        if subscription["status"] != "paused":
            return stripe_error(400, "invalid_request_error", "subscription_not_paused")
        now = int(time.time())
        for item in subscription["items"]["data"]:
            item.update(current_period_start=now, current_period_end=now + 30 * 86_400)
        subscription.update(status="active", status_details=None)
        if key is not None:
            self._remember(key, copy.deepcopy(subscription))
        return httpx.Response(200, json=subscription)

    def _cancel_subscription(self, request: httpx.Request, object_id: str) -> httpx.Response:
        self._record(request)
        subscription = self.subscriptions[object_id]
        now = int(time.time())
        subscription.update(status="canceled", canceled_at=now, ended_at=now)
        return httpx.Response(200, json=subscription)

    def _create_schedule(self, request: httpx.Request) -> httpx.Response:
        """A schedule from a subscription: one phase, the subscription as it is (every item,
        its discounts, a running trial) until the end of its current period."""
        fields, key = self._record(request)
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        subscription = self.subscriptions[fields["from_subscription"]]
        if subscription["schedule"] is not None:
            return stripe_error(400, "invalid_request_error", "subscription_schedule_exists")
        first = subscription["items"]["data"][0]
        phase: dict[str, Any] = {
            "start_date": first["current_period_start"],
            "end_date": _period_end(subscription),
            "items": [_phase_item(item) for item in subscription["items"]["data"]],
            "discounts": [{"discount": d, "coupon": None, "promotion_code": None}
                          for d in subscription["discounts"]],
            "trial_end": subscription["trial_end"] if subscription["status"] == "trialing"
            else None,
            "proration_behavior": "create_prorations",
        }  # fmt: skip
        schedule = {
            "id": self._new_id("sub_sched"),
            "object": "subscription_schedule",
            "subscription": subscription["id"],
            "customer": subscription["customer"],
            "status": "active",
            "end_behavior": "release",
            "current_phase": {"start_date": phase["start_date"], "end_date": phase["end_date"]},
            "phases": [phase],
            "released_at": None,
            "released_subscription": None,
        }
        subscription["schedule"] = schedule["id"]
        self.schedules[schedule["id"]] = schedule
        if key is not None:
            self._remember(key, copy.deepcopy(schedule))
        return httpx.Response(200, json=schedule)

    def _get_schedule(self, request: httpx.Request, object_id: str) -> httpx.Response:
        self._record(request)
        return httpx.Response(200, json=self.schedules[object_id])

    def _update_schedule(self, request: httpx.Request, object_id: str) -> httpx.Response:
        """New phases for an active schedule; the phase in effect applies to the subscription
        at once (its items, discounts and trial become the subscription's)."""
        fields, key = self._record(request)
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        schedule = self.schedules[object_id]
        phases = _phases_from_form(fields)
        refusal = self._phases_refusal(schedule, phases)
        if refusal == MIXED_INTERVALS:
            return stripe_error(400, "invalid_request_error", None, refusal)
        if refusal is not None:
            return stripe_error(400, "invalid_request_error", refusal)
        current_start = schedule["current_phase"]["start_date"]
        current = next(p for p in phases if p["start_date"] == current_start)
        for before, after in itertools.pairwise(phases):
            after["start_date"] = after["start_date"] or before["end_date"]
        schedule["phases"] = phases
        schedule["end_behavior"] = fields.get("end_behavior", schedule["end_behavior"])
        schedule["current_phase"]["end_date"] = current["end_date"]
        self._enter_phase(schedule, current)
        if key is not None:
            self._remember(key, copy.deepcopy(schedule))
        return httpx.Response(200, json=schedule)

    def _phases_refusal(self, schedule: dict[str, Any], phases: list[dict[str, Any]]) -> str | None:
        """Why Stripe would refuse these phases, if it would: the schedule is no longer active;
        a phase that already ended is changed (it may be left out); the phase in effect does
        not keep its start; a price is in another currency than the subscription; a metered
        price is given a quantity."""
        if schedule["status"] != "active":
            return "schedule_not_active"
        subscription = self.subscriptions[schedule["subscription"]]
        now = int(time.time())
        ended = {p["start_date"]: p for p in schedule["phases"] if (p["end_date"] or now) < now}
        current_start = schedule["current_phase"]["start_date"]
        for phase in phases:
            start, old = phase["start_date"], ended.get(phase["start_date"])
            past = start is not None and start < current_start
            if past and (old is None or _phase_prices(old) != _phase_prices(phase)):
                return "phase_already_ended"
            refusal = self._phase_items_refusal(subscription, phase["items"])
            if refusal is not None:
                return refusal
        if all(p["start_date"] != current_start for p in phases):
            return "phase_start_mismatch"
        return None

    def _phase_items_refusal(
        self, subscription: dict[str, Any], items: list[dict[str, Any]]
    ) -> str | None:
        """A price in another currency, a metered price with a quantity, or (classic billing
        mode) prices of different intervals in one phase."""
        prices = [self.prices[item["price"]] for item in items]
        for item, price in zip(items, prices, strict=True):
            if price["currency"] != subscription["currency"]:
                return "currency_mismatch"
            metered = price["recurring"]["usage_type"] == "metered"
            if metered and item.get("quantity") is not None:
                return "parameter_invalid_integer"
        return MIXED_INTERVALS if _interval_refused(subscription, prices) else None

    def _enter_phase(self, schedule: dict[str, Any], phase: dict[str, Any]) -> None:
        """Make the subscription what the phase says: its items (an item keeps its id while
        its price stays), discounts and trial."""
        subscription = self.subscriptions[schedule["subscription"]]
        old_items = subscription["items"]["data"]
        template = old_items[0]
        items: list[dict[str, Any]] = []
        for wanted in phase["items"]:
            kept = next((i for i in old_items if i["price"]["id"] == wanted["price"]), None)
            item = copy.deepcopy(kept or template)
            if kept is None or any(i["id"] == item["id"] for i in items):
                item["id"] = self._new_id("si")
            item["price"] = copy.deepcopy(self.prices[wanted["price"]])
            item["discounts"] = [d["discount"] for d in wanted.get("discounts", [])]
            item.pop("quantity", None)
            if wanted.get("quantity") is not None:
                item["quantity"] = wanted["quantity"]
            elif item["price"]["recurring"]["usage_type"] == "licensed":
                item["quantity"] = 1
            items.append(item)
        subscription["items"]["data"] = items
        subscription["discounts"] = [d["discount"] for d in phase.get("discounts", [])]
        if phase.get("trial_end") is None and subscription["status"] == "trialing":
            subscription.update(status="active", trial_end=int(time.time()))

    def advance_schedule(self, schedule_id: str) -> dict[str, Any]:
        """Play time up to the end of the phase in effect: every date moves back so that phase
        ends now, and the next phase starts (a new period, without the trial it does not
        carry). At the end of the last phase, the schedule releases the subscription."""
        schedule = self.schedules[schedule_id]
        subscription = self.subscriptions[schedule["subscription"]]
        phases = schedule["phases"]
        current_start = schedule["current_phase"]["start_date"]
        index = next(n for n, p in enumerate(phases) if p["start_date"] == current_start)
        now = int(time.time())
        shift = (phases[index]["end_date"] or now) - now
        for phase in phases:
            phase["start_date"] -= shift
            phase["end_date"] = phase["end_date"] and phase["end_date"] - shift
        for item in subscription["items"]["data"]:
            item["current_period_start"] -= shift
            item["current_period_end"] -= shift
        if subscription["trial_end"]:
            subscription["trial_end"] -= shift
        if index + 1 == len(phases):
            schedule.update(status="released", current_phase=None, released_at=now,
                            released_subscription=subscription["id"])  # fmt: skip
            subscription["schedule"] = None
            return schedule
        following = phases[index + 1]
        following["start_date"] = now
        following["end_date"] = following["end_date"] or now + 30 * 86_400
        schedule["current_phase"] = {
            "start_date": following["start_date"],
            "end_date": following["end_date"],
        }
        self._enter_phase(schedule, following)
        for item in subscription["items"]["data"]:
            item.update(current_period_start=now, current_period_end=following["end_date"])
        return schedule

    def _release_schedule(self, request: httpx.Request, object_id: str) -> httpx.Response:
        """Only an active (or not yet started) schedule can be released."""
        _fields, key = self._record(request)
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        schedule = self.schedules[object_id]
        if schedule["status"] not in {"active", "not_started"}:
            return stripe_error(400, "invalid_request_error", "schedule_not_active")
        schedule.update(status="released", current_phase=None, released_at=int(time.time()),
                        released_subscription=schedule["subscription"])  # fmt: skip
        self.subscriptions[schedule["subscription"]]["schedule"] = None
        if key is not None:
            self._remember(key, copy.deepcopy(schedule))
        return httpx.Response(200, json=schedule)

    # Reads

    # Discounts

    def _create_coupon(self, request: httpx.Request) -> httpx.Response:
        """A coupon is a percentage or an amount in a currency, for once, some months or
        forever; a custom id is refused once taken."""
        fields, key = self._record(request)
        if not self._replayable(key):
            percent, amount = fields.get("percent_off"), fields.get("amount_off")
            repeating = fields.get("duration") == "repeating"
            if (percent is None) == (amount is None) or (amount is None) != (
                fields.get("currency") is None
            ):
                return stripe_error(400, "invalid_request_error", "parameter_invalid_empty")
            if repeating != ("duration_in_months" in fields):
                return stripe_error(400, "invalid_request_error", "parameter_missing")
            if fields.get("id") in self.coupons:
                return stripe_error(400, "invalid_request_error", "resource_already_exists")

        def build() -> dict[str, Any]:
            coupon_id = fields.get("id") or self._new_id("coupon")
            coupon: dict[str, Any] = {
                "id": coupon_id,
                "object": "coupon",
                "amount_off": _int_field(fields, "amount_off"),
                "created": int(time.time()),
                "currency": fields.get("currency"),
                "duration": fields.get("duration", "once"),
                "duration_in_months": _int_field(fields, "duration_in_months"),
                "livemode": False,
                "max_redemptions": _int_field(fields, "max_redemptions"),
                "metadata": _nested(fields, "metadata"),
                "name": fields.get("name"),
                "percent_off": float(fields["percent_off"]) if "percent_off" in fields else None,
                "redeem_by": _int_field(fields, "redeem_by"),
                "times_redeemed": 0,
                "valid": True,
            }
            self.coupons[coupon_id] = coupon
            return coupon

        return self._respond(key, build)

    def _create_promotion_code(self, request: httpx.Request) -> httpx.Response:
        """A code for an existing coupon (`promotion[type]=coupon`); active codes are unique
        regardless of case."""
        fields, key = self._record(request)
        if not self._replayable(key):
            if fields.get("promotion[type]") != "coupon":
                return stripe_error(400, "invalid_request_error", "parameter_missing")
            if fields.get("promotion[coupon]") not in self.coupons:
                return stripe_error(400, "invalid_request_error", "resource_missing")
            taken = {c["code"].lower() for c in self.promotion_codes.values() if c["active"]}
            if fields.get("code", "").lower() in taken:
                return stripe_error(400, "invalid_request_error", "resource_already_exists")

        def build() -> dict[str, Any]:
            promotion_code_id = self._new_id("promo")
            promotion_code: dict[str, Any] = {
                "id": promotion_code_id,
                "object": "promotion_code",
                "active": fields.get("active", "true") == "true",
                "code": fields.get("code") or f"CODE{next(self._ids)}",
                "created": int(time.time()),
                "customer": fields.get("customer"),
                "customer_account": None,
                "expires_at": _int_field(fields, "expires_at"),
                "livemode": False,
                "max_redemptions": _int_field(fields, "max_redemptions"),
                "metadata": _nested(fields, "metadata"),
                "promotion": {"type": "coupon", "coupon": fields["promotion[coupon]"]},
                "restrictions": {
                    "currency_options": {},
                    "first_time_transaction": False,
                    "minimum_amount": None,
                    "minimum_amount_currency": None,
                },
                "times_redeemed": 0,
            }
            self.promotion_codes[promotion_code_id] = promotion_code
            return promotion_code

        return self._respond(key, build)

    def _getter(self, store: dict[str, dict[str, Any]]) -> Any:
        def get(request: httpx.Request, object_id: str) -> httpx.Response:
            self._record(request)
            found = store.get(object_id)
            if found is None:
                return stripe_error(404, "invalid_request_error", "resource_missing")
            return httpx.Response(200, json=_public(found))

        return get

    def _list_events(self, request: httpx.Request) -> httpx.Response:
        self._record(request)
        return httpx.Response(
            200,
            json={"object": "list", "data": self.undelivered_events, "has_more": False,
                  "url": "/v1/events"},
        )  # fmt: skip

    def add_charge(
        self,
        payment_intent: str,
        *,
        refunded: bool = False,
        customer: str | None = None,
        amount: int | None = None,
    ) -> dict[str, Any]:
        charge = stripe_object(
            "charge", id=self._new_id("ch"), payment_intent=payment_intent, refunded=refunded,
            customer=customer,
        )  # fmt: skip
        if amount is not None:
            charge.update(amount=amount, amount_captured=amount)
        if refunded:
            charge["amount_refunded"] = charge["amount"]
        self.charges[charge["id"]] = charge
        return charge

    def refund_charge(self, charge_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund the charge, wholly or in part; `refunded` is true only once the refunds add
        up to the whole amount (Stripe: "if partially refunded, this attribute is false")."""
        charge = self.charges[charge_id]
        refund = charge["amount"] - charge["amount_refunded"] if amount is None else amount
        charge["amount_refunded"] += refund
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        return charge

    def add_invoice(
        self, customer: str, *, status: str = "open", hosted_invoice_url: str | None = None
    ) -> dict[str, Any]:
        """An invoice of the customer; an open one has its Stripe-hosted payment page."""
        invoice_id = self._new_id("in")
        invoice = stripe_object(
            "invoice",
            id=invoice_id,
            customer=customer,
            status=status,
            attempt_count=1,
            hosted_invoice_url=hosted_invoice_url
            or f"https://invoice.stripe.com/i/acct_fake/test_{invoice_id}",
        )
        self.invoices[invoice_id] = invoice
        return invoice

    def add_dispute(self, charge_id: str, *, status: str = "needs_response") -> dict[str, Any]:
        """The cardholder disputes the charge: Stripe opens a dispute for its whole amount."""
        charge = self.charges[charge_id]
        charge["disputed"] = True
        dispute = stripe_object(
            "dispute",
            id=self._new_id("dp"),
            charge=charge_id,
            payment_intent=charge["payment_intent"],
            amount=charge["amount"],
            currency=charge["currency"],
            status=status,
            reason="fraudulent",
        )
        self.disputes[dispute["id"]] = dispute
        return dispute

    # Invoices: the customer's list (newest first) and the preview of the next one

    def _invoice_routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", r"^/v1/invoices$"): self._list_invoices,
            ("POST", r"^/v1/invoices/create_preview$"): self._preview_invoice,
        }

    def add_issued_invoice(
        self, customer: str, *, created: int, total: int, status: str = "paid"
    ) -> dict[str, Any]:
        """A finalized invoice, numbered, with its Stripe-hosted page and PDF."""
        invoice_id = self._new_id("in")
        invoice = stripe_object(
            "invoice", id=invoice_id, customer=customer, status=status, created=created,
            number=f"FAKE-{next(self._ids):04d}", total=total, subtotal=total,
            amount_due=total, amount_paid=total if status == "paid" else 0,
            period_start=created - 30 * 86_400, period_end=created,
            hosted_invoice_url=f"https://invoice.stripe.com/i/acct_fake/test_{invoice_id}",
            invoice_pdf=f"https://pay.stripe.com/invoice/acct_fake/test_{invoice_id}/pdf",
        )  # fmt: skip
        self.invoices[invoice_id] = invoice
        return invoice

    def _list_invoices(self, request: httpx.Request) -> httpx.Response:
        """Stripe's order (newest `created` first, the later-made first on ties), `limit`
        1-100 (default 10), `starting_after` an invoice of the list or a 404."""
        self._record(request)
        params = request.url.params
        limit = int(params.get("limit", "10"))
        if not 1 <= limit <= 100:
            return stripe_error(400, "invalid_request_error", "parameter_invalid_integer")
        made = list(self.invoices.values())
        listed = sorted(
            (i for i in made if i["customer"] == params.get("customer")),
            key=lambda i: (i["created"], made.index(i)),
            reverse=True,
        )
        after = params.get("starting_after")
        if after is not None:
            position = next((n for n, i in enumerate(listed) if i["id"] == after), None)
            if position is None:
                return stripe_error(404, "invalid_request_error", "resource_missing")
            listed = listed[position + 1 :]
        return httpx.Response(
            200,
            json={"object": "list", "data": [_public(i) for i in listed[:limit]],
                  "has_more": len(listed) > limit, "url": "/v1/invoices"},
        )  # fmt: skip

    def _preview_invoice(self, request: httpx.Request) -> httpx.Response:
        """The subscription's next invoice: licensed items billed ahead for the next period,
        metered items in arrears for the current one at the usage their meter summed so far.
        None comes for a subscription that is cancelled or ends with its period."""
        fields, _key = self._record(request)
        subscription = self.subscriptions.get(fields.get("subscription", ""))
        if subscription is None or subscription["customer"] != fields.get("customer"):
            return stripe_error(404, "invalid_request_error", "resource_missing")
        if subscription["status"] == "canceled" or subscription["cancel_at_period_end"]:
            return stripe_error(404, "invalid_request_error", "invoice_upcoming_none")
        lines = [self._preview_line(subscription, item) for item in subscription["items"]["data"]]
        subtotal = sum(line["amount"] for line in lines)
        tax = subtotal * self.preview_tax_percent // 100
        first = subscription["items"]["data"][0]
        preview = stripe_object(
            "invoice", id=f"upcoming_{self._new_id('in')}", customer=subscription["customer"],
            status="draft", number=None, hosted_invoice_url=None, invoice_pdf=None,
            currency=subscription["currency"], billing_reason="upcoming",
            subtotal=subtotal, subtotal_excluding_tax=subtotal, total_excluding_tax=subtotal,
            total=subtotal + tax, amount_due=subtotal + tax, amount_remaining=subtotal + tax,
            period_start=first["current_period_start"], period_end=first["current_period_end"],
            total_taxes=[{"amount": tax, "tax_behavior": "exclusive", "tax_rate_details": None,
                          "taxability_reason": "standard_rated", "taxable_amount": subtotal,
                          "type": "tax_rate_details"}] if tax else [],
            parent={"type": "subscription_details", "quote_details": None,
                    "subscription_details": {"metadata": {}, "subscription": subscription["id"]}},
        )  # fmt: skip
        preview["lines"] = {"object": "list", "data": lines, "has_more": False,
                            "url": f"/v1/invoices/{preview['id']}/lines"}  # fmt: skip
        return httpx.Response(200, json=preview)

    def _metered_quantity(self, customer: str, price: dict[str, Any], item: dict[str, Any]) -> int:
        """A metered item's usage this period: what its meter summed for the customer from
        the events stamped within the period, else what a test set in `metered_usage`."""
        meter = getattr(self, "meters", {}).get(price["recurring"].get("meter"))
        if meter is None:
            return self.metered_usage.get(item["id"], 0)
        start, end = item["current_period_start"], item["current_period_end"]
        return sum(
            int(e["payload"]["value"])
            for e in self.meter_events
            if e["event_name"] == meter["event_name"]
            and e["payload"].get("stripe_customer_id") == customer
            and start <= e["timestamp"] < end
        )

    def _preview_line(self, subscription: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        price = self.prices.get(item["price"]["id"], item["price"])
        metered = price["recurring"]["usage_type"] == "metered"
        unit = float(price["unit_amount_decimal"] or price["unit_amount"] or 0)
        start, end = item["current_period_start"], item["current_period_end"]
        if metered:
            quantity = self._metered_quantity(subscription["customer"], price, item)
        else:
            quantity = item["quantity"]
            start, end = end, end + (end - start)
        line: dict[str, Any] = copy.deepcopy(FIXTURES["invoice"]["lines"]["data"][0])
        line.update(
            id=self._new_id("il"), amount=round(unit * quantity), currency=price["currency"],
            description=f"{quantity} × {price['product']}", quantity=quantity,  # noqa: RUF001
            period={"start": start, "end": end}, subtotal=round(unit * quantity),
            pricing={"type": "price_details", "unit_amount_decimal": str(unit),
                     "price_details": {"price": price["id"], "product": price["product"]}},
            parent={"type": "subscription_item_details", "invoice_item_details": None,
                    "subscription_item_details": {
                        "invoice_item": None, "proration": False, "proration_details": None,
                        "subscription": subscription["id"], "subscription_item": item["id"]}},
        )  # fmt: skip
        return line

    # Billing meters and meter events

    def _meter_routes(self) -> dict[tuple[str, str], Any]:
        self.meters: dict[str, dict[str, Any]] = {}
        self.meter_events: list[dict[str, Any]] = []
        self._meter_event_identifiers: dict[str, float] = {}
        return {
            ("POST", r"^/v1/billing/meters$"): self._create_meter,
            ("GET", r"^/v1/billing/meters$"): self._list_meters,
            ("GET", r"^/v1/billing/meters/(?P<object_id>[^/]+)$"): self._getter(self.meters),
            ("POST", r"^/v1/billing/meter_events$"): self._create_meter_event,
        }

    def _create_meter(self, request: httpx.Request) -> httpx.Response:
        """A `billing.meter` as Stripe documents it; an event name names one live meter."""
        fields, key = self._record(request)
        if not self._replayable(key) and any(
            m["event_name"] == fields["event_name"] and m["status"] == "active"
            for m in self.meters.values()
        ):
            return httpx.Response(
                400,
                json={"error": {"type": "invalid_request_error",
                                "message": "A meter with this event_name already exists."}},
            )  # fmt: skip

        def build() -> dict[str, Any]:
            now = int(time.time() + self.elapsed)
            meter: dict[str, Any] = {
                "id": self._new_id("mtr"),
                "object": "billing.meter",
                "created": now,
                "customer_mapping": {
                    "event_payload_key": fields["customer_mapping[event_payload_key]"],
                    "type": fields["customer_mapping[type]"],
                },
                "default_aggregation": {"formula": fields["default_aggregation[formula]"]},
                "display_name": fields["display_name"],
                "event_name": fields["event_name"],
                "event_time_window": None,
                "livemode": False,
                "status": "active",
                "status_transitions": {"deactivated_at": None},
                "updated": now,
                "value_settings": {
                    "event_payload_key": fields["value_settings[event_payload_key]"]
                },
            }
            self.meters[meter["id"]] = meter
            return meter

        return self._respond(key, build)

    def _list_meters(self, request: httpx.Request) -> httpx.Response:
        fields, _key = self._record(request)
        status = fields.get("status")
        data = [m for m in self.meters.values() if status is None or m["status"] == status]
        return httpx.Response(
            200,
            json={"object": "list", "data": data, "has_more": False, "url": "/v1/billing/meters"},
        )

    def _create_meter_event(self, request: httpx.Request) -> httpx.Response:
        """A `billing.meter_event`. Stripe counts an identifier once within at least 24 hours:
        a repeated request under the same idempotency key replays the first answer, and a new
        request with an identifier already seen is refused with 400 (`An event already exists
        with identifier …`), so nothing is counted twice."""
        fields, key = self._record(request)
        if key is not None and self._replayable(key):
            return httpx.Response(200, json=self._responses[key])
        identifier = fields.get("identifier") or uuid.uuid4().hex
        now = time.time() + self.elapsed
        seen_at = self._meter_event_identifiers.get(identifier)
        if seen_at is not None and now - seen_at < IDEMPOTENCY_WINDOW_SECONDS:
            return httpx.Response(
                400,
                headers={"stripe-should-retry": "false"},
                json={"error": {"type": "invalid_request_error",
                                "message": f"An event already exists with identifier "
                                           f"{identifier}."}},
            )  # fmt: skip
        if not any(m["event_name"] == fields.get("event_name") for m in self.meters.values()):
            return httpx.Response(
                400,
                json={"error": {"type": "invalid_request_error",
                                "message": "No active meter was found for event_name."}},
            )  # fmt: skip
        self._meter_event_identifiers[identifier] = now
        event = {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": fields["event_name"],
            "identifier": identifier,
            "livemode": False,
            "payload": _nested(fields, "payload"),
            "timestamp": int(fields.get("timestamp", int(now))),
        }
        self.meter_events.append(event)
        if key is not None:
            self._remember(key, event)
        return httpx.Response(200, json=event)

    def metered_units(self, event_name: str, stripe_customer_id: str) -> int:
        """What the meter sums for one customer: the value of every accepted event."""
        return sum(
            int(e["payload"]["value"])
            for e in self.meter_events
            if e["event_name"] == event_name
            and e["payload"].get("stripe_customer_id") == stripe_customer_id
        )


def stripe_event(event_type: str, obj: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """An event in Stripe's shape carrying `obj`, with a fresh id unless one is given."""
    return (
        stripe_object(
            "event",
            id=f"evt_{uuid.uuid4().hex[:24]}",
            type=event_type,
            livemode=False,
            created=int(time.time()),
            data={"object": obj},
            request={"id": None, "idempotency_key": None},
            pending_webhooks=1,
        )
        | overrides
    )


# Failures Stripe gives before the endpoint runs, which it does not keep under the key: most
# invalid requests (400), a missing or wrong API key (401), another request still running with
# the same key (409 `idempotency_key_in_use`), and rate limits (429, checked first of all).
_NOT_KEPT = frozenset({400, 401, 409, 429})


def _kept_for_key(failure: httpx.Response) -> bool:
    """Whether Stripe keeps this failure under the request's idempotency key: every failure the
    endpoint itself gave (a decline, a missing object, a 500), replayed until the key expires.
    ("Retries with the same key return the saved response, including 500 errors.")"""
    return failure.is_error and failure.status_code not in _NOT_KEPT


def _period_end(subscription: dict[str, Any]) -> int:
    """The earliest end of the items' current periods (what `min_period_end` resolves to)."""
    return min(int(item["current_period_end"]) for item in subscription["items"]["data"])


def _interval_refused(subscription: dict[str, Any], prices: list[dict[str, Any]]) -> bool:
    """Whether Stripe refuses these prices together on the subscription: in classic billing
    mode every recurring price bills on one interval."""
    if subscription.get("billing_mode", {}).get("type") != "classic":
        return False
    return len({(p["recurring"]["interval"], p["recurring"].get("interval_count", 1))
                for p in prices}) > 1  # fmt: skip


def _phase_item(item: dict[str, Any]) -> dict[str, Any]:
    """A subscription item as a schedule phase lists it."""
    return {
        "price": item["price"]["id"],
        "quantity": item.get("quantity"),
        "discounts": [{"discount": d} for d in item.get("discounts") or []],
    }


def _phase_prices(phase: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(item["price"], item.get("quantity")) for item in phase["items"]]


def _int_field(fields: dict[str, str], name: str) -> int | None:
    return int(fields[name]) if name in fields else None


def _discounts_from_form(fields: dict[str, str]) -> list[dict[str, Any]]:
    return [{"discount": v} for k, v in fields.items() if k.startswith("discounts][")]


def _phases_from_form(fields: dict[str, str]) -> list[dict[str, Any]]:
    """`phases[n][...]` form fields as phase objects, in order."""
    phases = []
    for n in itertools.count():
        phase_fields = _nested(fields, f"phases[{n}]")
        if not phase_fields:
            break
        items = []
        for m in itertools.count():
            prefix = f"items][{m}]["
            item = {
                k.removeprefix(prefix): v for k, v in phase_fields.items() if k.startswith(prefix)
            }
            if not item:
                break
            items.append(
                {
                    "price": item["price"],
                    "quantity": _int_field(item, "quantity"),
                    "discounts": _discounts_from_form(item),
                }
            )
        phases.append(
            {
                "start_date": _int_field(phase_fields, "start_date"),
                "end_date": _int_field(phase_fields, "end_date"),
                "items": items,
                "discounts": _discounts_from_form(phase_fields),
                "trial_end": _int_field(phase_fields, "trial_end"),
                "proration_behavior": phase_fields.get("proration_behavior", "create_prorations"),
            }
        )
    return phases


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """What Stripe would send: our bookkeeping fields (leading underscore) left out."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}
