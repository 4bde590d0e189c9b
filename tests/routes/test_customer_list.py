"""The operator's lists: customers searched by id or email prefix, events by type and customer."""

from __future__ import annotations

import asyncpg
import httpx

from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer


async def test_customers_are_searched_by_id_prefix_or_email_ignoring_case(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """`q` keeps customers whose external id starts with it, or whose email does in any case;
    each shows the plan granted now and its subscription's status; pages never repeat one."""
    await pool.execute(
        "INSERT INTO plans (key, name, is_default) VALUES ('free', 'Free', true), "
        "('pro', 'Pro', false)"
    )
    await pool.execute(
        "INSERT INTO prices (plan_id, lookup_key, amount, currency, type, recurring_interval) "
        "SELECT id, 'pro_monthly', 2000, 'usd', 'recurring', 'month' FROM plans WHERE key = 'pro'"
    )
    for external_id, email in [
        ("team_1", "Alice@Example.com"), ("team_2", "bob@example.com"), ("solo_1", "team@x.org"),
        ("other", None),
    ]:  # fmt: skip
        await pool.execute(
            "INSERT INTO customers (external_id, email) VALUES ($1, $2)", external_id, email
        )
    await pool.execute(
        "INSERT INTO subscriptions (customer_id, stripe_subscription_id, status, stripe_price_id, "
        "price_id, stripe_created_at) SELECT c.id, 'sub_1', 'active', 'price_x', p.id, now() "
        "FROM customers c, prices p WHERE c.external_id = 'team_1'"
    )
    key = await issue_key(pool, Scope.BILLING)

    async def ids(q: str, limit: int = 100) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            params = {"q": q, "limit": str(limit)} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/v1/customers", params=params, headers=bearer(key))).json()
            found += [row["customer_id"] for row in page["data"]]
            if not page["has_more"]:
                return sorted(found)
            cursor = page["next_cursor"]

    assert await ids("team") == ["solo_1", "team_1", "team_2"]
    assert await ids("team", limit=1) == ["solo_1", "team_1", "team_2"]
    assert await ids("ALICE@") == ["team_1"]
    assert await ids("bob@example.com") == ["team_2"]
    assert await ids("Team") == ["solo_1"]  # its email; external ids are case-sensitive
    assert await ids("zzz") == []
    everyone = (await client.get("/v1/customers", headers=bearer(key))).json()["data"]
    shown = {
        row["customer_id"]: (row["plan"]["key"], row["subscription_status"]) for row in everyone
    }
    assert shown == {
        "team_1": ("pro", "active"), "team_2": ("free", None), "solo_1": ("free", None),
        "other": ("free", None),
    }  # fmt: skip
    refused = await client.get("/v1/customers", params={"q": ""}, headers=bearer(key))
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "q"
    usage = await issue_key(pool, Scope.USAGE)
    assert (await client.get("/v1/customers", headers=bearer(usage))).status_code == 403


async def test_events_are_filtered_by_type_and_customer(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """`type` keeps one event type, `customer` the events about that customer's Stripe customer
    (its objects, or the customer object itself); an unknown customer is a 404."""
    await pool.execute(
        "INSERT INTO customers (external_id, stripe_customer_id) VALUES ('a', 'cus_a'), "
        "('b', 'cus_b'), ('c', NULL)"
    )
    events = [
        ("evt_1", "invoice.paid", "in_1", {"object": "invoice", "id": "in_1", "customer": "cus_a"}),
        ("evt_2", "invoice.paid", "in_2", {"object": "invoice", "id": "in_2", "customer": "cus_b"}),
        ("evt_3", "customer.updated", "cus_a", {"object": "customer", "id": "cus_a"}),
        ("evt_4", "customer.subscription.updated", "sub_1",
         {"object": "subscription", "id": "sub_1", "customer": "cus_a"}),
    ]  # fmt: skip
    for event_id, event_type, object_id, data in events:
        await pool.execute(
            "INSERT INTO stripe_events (stripe_event_id, type, livemode, stripe_created_at, "
            "object_id, payload, status) VALUES ($1, $2, false, now(), $3, $4, 'processed')",
            event_id, event_type, object_id, {"data": {"object": data}},
        )  # fmt: skip
    key = await issue_key(pool, Scope.ADMIN)

    async def ids(**params: str) -> list[str]:
        response = await client.get("/v1/events", params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        return sorted(row["id"] for row in response.json()["data"])

    assert await ids(type="invoice.paid") == ["evt_1", "evt_2"]
    assert await ids(customer="a") == ["evt_1", "evt_3", "evt_4"]
    assert await ids(customer="a", type="invoice.paid") == ["evt_1"]
    assert await ids(customer="a", type="invoice.paid", status="failed") == []
    assert await ids(customer="c") == []
    page = (await client.get("/v1/events", params={"customer": "a", "limit": "2"},
                             headers=bearer(key))).json()  # fmt: skip
    rest = await client.get(
        "/v1/events", params={"customer": "a", "cursor": page["next_cursor"]}, headers=bearer(key)
    )
    assert len(page["data"]) + len(rest.json()["data"]) == 3
    unknown = await client.get("/v1/events", params={"customer": "nobody"}, headers=bearer(key))
    assert unknown.status_code == 404
    bad = await client.get("/v1/events", params={"type": "Bad Type!"}, headers=bearer(key))
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "type"
