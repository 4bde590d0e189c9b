"""A fake of the slice of Stripe's API the service uses, built from Stripe's own sample objects.

Responses start from `fixtures/stripe_objects.json` (Stripe's published fixtures) so they have
Stripe's real shapes. Like Stripe, the fake honours idempotency keys: a repeated key returns the
first response and creates nothing.
"""

from __future__ import annotations

import copy
import itertools
import json
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


class FakeStripeCatalog:
    """Products and prices, kept in memory; every call is recorded in `calls`."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.products: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.failing_paths: set[str] = set()  # paths answering 500, to play an outage
        self._responses: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        handlers = {
            r"^/v1/products$": self._create_product,
            r"^/v1/products/(?P<object_id>[^/]+)$": self._update_product,
            r"^/v1/prices$": self._create_price,
            r"^/v1/prices/(?P<object_id>[^/]+)$": self._update_price,
        }
        for pattern, handler in handlers.items():
            router.post(path__regex=pattern).mock(side_effect=self._unless_failing(handler))

    def _unless_failing(self, handler: Any) -> Any:
        def respond(request: httpx.Request, **params: str) -> httpx.Response:
            if request.url.path in self.failing_paths:
                self._record(request)
                return httpx.Response(500, json={"error": {"type": "api_error"}})
            response: httpx.Response = handler(request, **params)
            return response

        return respond

    def calls_to(self, method: str, path_prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def _record(self, request: httpx.Request) -> tuple[dict[str, str], str | None]:
        fields = form(request)
        key = request.headers.get("idempotency-key")
        self.calls.append(Call(request.method, request.url.path, fields, key))
        return fields, key

    def _respond(self, key: str | None, build: Any) -> httpx.Response:
        if key is not None and key in self._responses:
            return httpx.Response(200, json=self._responses[key])
        body: dict[str, Any] = build()
        if key is not None:
            self._responses[key] = body
        return httpx.Response(200, json=body)

    def _create_product(self, request: httpx.Request) -> httpx.Response:
        fields, key = self._record(request)

        def build() -> dict[str, Any]:
            product = stripe_object(
                "product",
                id=f"prod_fake{next(self._ids)}",
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
            price = stripe_object(
                "price",
                id=f"price_fake{next(self._ids)}",
                product=fields["product"],
                unit_amount=int(fields["unit_amount"]),
                unit_amount_decimal=fields["unit_amount"],
                currency=fields["currency"],
                lookup_key=fields.get("lookup_key"),
                metadata=_nested(fields, "metadata"),
                type="recurring" if recurring else "one_time",
            )
            price["recurring"] = (
                price["recurring"] | {"interval": recurring["interval"]} if recurring else None
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
