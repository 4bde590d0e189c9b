"""No route answers an unbounded list: every GET route of the app whose answer holds a list at its
top level pages it (`limit` and `cursor` in, `has_more` and `next_cursor` out), or is named here
with what bounds it otherwise. A new list route that does neither fails both tests: the contract
check reads openapi.yaml, the served check calls every GET route with `?limit=1` against a
database holding two of everything.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import asyncpg
import httpx
import yaml
from starlette.routing import Route

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.resources import openapi_path
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer

# Top-level lists that are not paged, and what bounds each.
BOUNDED_OTHERWISE = {
    ("/v1/plans/{key}", "prices"): "one plan's prices, the operator's catalog",
    ("/v1/plans/{key}", "features"): "one entry per feature of the catalog",
    ("/v1/customers/{customer_id}/entitlements", "features"): "one per feature of the catalog",
    ("/v1/customers/{customer_id}/members/{member_id}/entitlements", "features"): (
        "one per feature of the catalog"
    ),
    ("/v1/customers/{customer_id}/usage", "data"): (
        "a window of at most 744 hours or 366 days per feature (history_window.py)"
    ),
    ("/v1/customers/{customer_id}/usage", "overage_billing"): "at most one per feature",
    ("/v1/reports/revenue", "weeks"): "the last 12 weeks (services/revenue.py WEEKS)",
    ("/v1/reports/revenue", "recurring_statuses"): "a constant pair",
    ("/v1/customers/{customer_id}/upcoming-invoice", "lines"): (
        "the lines of one invoice preview, as Stripe's first page holds them"
    ),
    ("/v1/customers/{customer_id}/subscription", "items"): "the items of one subscription",
}

CUSTOMER = "listed_customer"
ENDPOINT_ID = uuid.UUID("00000000-0000-4000-8000-00000000000b")


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(openapi_path().read_text())
    return spec


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _properties(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The top-level properties of `schema`, through references and `allOf`, resolved."""
    schema = _resolve(spec, schema)
    found: dict[str, dict[str, Any]] = {}
    for part in schema.get("allOf", []):
        found |= _properties(spec, part)
    for name, prop in schema.get("properties", {}).items():
        resolved = _resolve(spec, prop)
        if name not in found or "type" in resolved:
            found[name] = resolved
    return found


def _is_list(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def _get_routes(settings: Settings) -> list[str]:
    return [
        route.path
        for route in create_app(settings).routes
        if isinstance(route, Route) and "GET" in (route.methods or ())
    ]


def test_every_documented_list_is_paged_or_bounded(settings: Settings) -> None:
    """In openapi.yaml, each GET route's top-level list is either on a page (`Page`: `has_more`
    and `next_cursor`, with the `limit` and `cursor` parameters) or named in BOUNDED_OTHERWISE."""
    spec = _spec()
    parameter_names = {"limit", "cursor"}
    unbounded, paged = [], []
    bounded: set[tuple[str, str]] = set()
    for path in _get_routes(settings):
        operation = spec["paths"][path]["get"]
        content = operation["responses"].get("200", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is None:
            continue
        properties = _properties(spec, schema)
        params = {
            _resolve(spec, p)["name"]
            for p in [*spec["paths"][path].get("parameters", []), *operation.get("parameters", [])]
        }
        for name, prop in properties.items():
            if not _is_list(prop):
                continue
            if (path, name) in BOUNDED_OTHERWISE:
                bounded.add((path, name))
                continue
            is_page = name == "data" and {"has_more", "next_cursor"} <= properties.keys()
            if is_page and parameter_names <= params:
                paged.append(path)
            else:
                unbounded.append(f"GET {path}: {name}")
    assert unbounded == [], f"lists without limit and cursor (routes/_pagination.py): {unbounded}"
    assert len(paged) >= 13, paged  # the lists paged today; catches a check that finds none
    assert sorted(BOUNDED_OTHERWISE.keys() - bounded) == [], "listed, but not a list any more"


async def _seed(pool: asyncpg.Pool) -> None:
    """Two of everything a list shows."""
    await pool.execute(
        "INSERT INTO customers (external_id) VALUES ($1), ('second_customer')", CUSTOMER
    )
    await pool.execute(
        "INSERT INTO features (key, name, kind) VALUES ('seats', 'Seats', 'metered'), "
        "('exports', 'Exports', 'boolean')"
    )
    await pool.execute(
        "INSERT INTO plans (key, name, is_default) VALUES ('free', 'Free', true), "
        "('pro', 'Pro', false)"
    )
    for n in range(2):
        await pool.execute(
            "INSERT INTO orders (customer_id, stripe_checkout_session_id, status, currency, "
            "amount_total) SELECT id, $2, 'paid', 'usd', 1000 FROM customers "
            "WHERE external_id = $1",
            CUSTOMER,
            f"cs_{n}",
        )
        await pool.execute(
            "INSERT INTO grant_audit (customer_id, feature_id, action, reason, actor_name, "
            "created_at) SELECT c.id, f.id, 'credits.granted', 'goodwill', 'ops', now() "
            "FROM customers c, features f WHERE c.external_id = $1 AND f.key = 'seats'",
            CUSTOMER,
        )
        await pool.execute(
            "INSERT INTO stripe_events (stripe_event_id, type, livemode, stripe_created_at, "
            "payload, status) VALUES ($1, 'customer.updated', false, now(), '{}', 'processed')",
            f"evt_{n}",
        )
        await pool.execute(
            "INSERT INTO meter_events (customer_id, feature_id, event_name, identifier, value, "
            "occurred_at) SELECT c.id, f.id, 'seats', $2, 1, now() FROM customers c, features f "
            "WHERE c.external_id = $1 AND f.key = 'seats'",
            CUSTOMER,
            f"meter_{n}",
        )
        await pool.execute(
            "INSERT INTO members (customer_id, member_id) "
            "SELECT id, $2 FROM customers WHERE external_id = $1",
            CUSTOMER,
            f"member_{n}",
        )
        coupon = await pool.fetchval(
            "INSERT INTO coupons (key, percent_off, duration) VALUES ($1, 10, 'once') RETURNING id",
            f"coupon_{n}",
        )
        await pool.execute(
            "INSERT INTO promotion_codes (code, coupon_id) VALUES ($1, $2)", f"CODE{n}", coupon
        )
        await pool.execute(
            "INSERT INTO api_keys (name, prefix, key_hash, scopes) "
            "VALUES ('listed', 'bsk_x', $1, ARRAY['usage'])",
            os.urandom(32),
        )
    for endpoint_id in (ENDPOINT_ID, uuid.uuid4()):
        await pool.execute(
            "INSERT INTO webhook_endpoints (id, url, event_types, secret) VALUES "
            "($1, 'https://hooks.example.com/in', ARRAY['usage.limit_reached'], 'whsec_x')",
            endpoint_id,
        )
    for _ in range(2):
        await pool.execute(
            """
            WITH event AS (
                INSERT INTO outbox_events (type, payload) VALUES ('usage.limit_reached', '{}')
                RETURNING id
            )
            INSERT INTO webhook_deliveries (event_id, endpoint_id, status)
            SELECT event.id, $1, 'delivered' FROM event
            """,
            ENDPOINT_ID,
        )


def _concrete(path: str) -> str:
    values = {
        "customer_id": CUSTOMER,
        "endpoint_id": str(ENDPOINT_ID),
        "key": "pro",
        "id": "cs_unknown",
        "member_id": "member_unknown",
    }
    return re.sub(r"{([a-z_]+)}", lambda m: values[m[1]], path)


async def test_every_served_list_holds_at_most_limit_items(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    """Every GET route, called with `?limit=1` while two of everything exist: each top-level
    list not in BOUNDED_OTHERWISE holds at most one item and says whether more follow."""
    await _seed(pool)
    key = await issue_key(pool, *Scope)
    lists_seen: dict[str, int] = {}
    for path in _get_routes(settings):
        response = await stripe_client.get(
            _concrete(path), params={"limit": 1}, headers=bearer(key)
        )
        assert response.status_code < 500, (path, response.text)
        if response.status_code != 200 or "json" not in response.headers["content-type"]:
            continue
        body = response.json()
        for name, value in body.items():
            if not isinstance(value, list) or (path, name) in BOUNDED_OTHERWISE:
                continue
            assert len(value) <= 1, f"GET {path} gave {len(value)} items in {name!r} at limit=1"
            assert name == "data", f"GET {path}: {name!r} is a list but not a page"
            assert isinstance(body.get("has_more"), bool), path
            assert (body["next_cursor"] is not None) == body["has_more"], path
            lists_seen[path] = len(value)
    with_more = [path for path, count in lists_seen.items() if count == 1]
    # Every seeded list really held something (invoices come from Stripe, empty for a customer
    # who never checked out).
    assert sorted(set(lists_seen) - set(with_more)) == ["/v1/customers/{customer_id}/invoices"]
    assert len(with_more) >= 12, lists_seen
