"""Every statement of the hot paths (check, track, entitlements) touches one customer's rows: each
scan of a customer-scoped table is bounded by an equality on its customer, so a distributed
PostgreSQL (Citus, distributed by customer) could send the statement to one shard.

The statements are captured as PostgreSQL runs them, nested ones inside our PL/pgSQL functions
and triggers included: `auto_explain` logs each statement's plan to the client, and the test
reads every scan node of every plan. Catalog tables (features, plans, prices, plan_features) are
the reference tables of that plan and may be read whole.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from asyncpg.pool import PoolConnectionProxy

from billing_service.db.pool import Pool, _init_connection, _keep_session
from billing_service.services import usage
from billing_service.services.usage import TrackRequest
from tests.routes.test_usage import catalog_with

GRACE = timedelta(days=7)
CONDITIONS = ("Index Cond", "Recheck Cond", "Filter", "Join Filter", "Hash Cond", "Merge Cond")
SCOPED_TABLES = """
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
  AND (c.relname = 'customers' OR EXISTS (
      SELECT 1 FROM pg_attribute a
      WHERE a.attrelid = c.oid AND a.attname = 'customer_id' AND NOT a.attisdropped))
"""
EXPLAIN_SETTINGS = (
    "auto_explain.log_min_duration = 0",
    "auto_explain.log_nested_statements = on",
    "auto_explain.log_format = json",
    "auto_explain.log_verbose = on",
    "client_min_messages = log",
)


class Captured:
    """The plans of the statements PostgreSQL ran on the capturing pool's connection."""

    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = []

    def heard(self, _conn: object, message: asyncpg.PostgresLogMessage) -> None:
        text = message.message or ""
        if "plan:" in text:
            self.plans.append(orjson.loads(text.split("plan:", 1)[1]))


@pytest.fixture
async def capturing(
    database_url: str, pool: asyncpg.Pool
) -> AsyncIterator[tuple[asyncpg.Pool, Captured]]:
    """The app's pool class with one connection that logs every statement's plan to us."""
    captured = Captured()

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        await conn.execute("LOAD 'auto_explain'")
        for setting in EXPLAIN_SETTINGS:
            await conn.execute(f"SET {setting}")

    async def listen(conn: PoolConnectionProxy) -> None:
        conn.add_log_listener(captured.heard)  # released listeners are dropped: add per checkout

    one = Pool(
        database_url, min_size=1, max_size=1, max_queries=50_000,
        max_inactive_connection_lifetime=300.0, loop=None, connection_class=asyncpg.Connection,
        record_class=asyncpg.Record, init=init, setup=listen, reset=_keep_session,
    )  # fmt: skip
    await one
    try:
        yield one, captured
    finally:
        await one.close()


def _scans(node: dict[str, Any], above: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    """Each plan node with the conditions written on it and on every node above it."""
    here = above + " " + " ".join(str(node[key]) for key in CONDITIONS if key in node)
    yield node, here
    for child in node.get("Plans", []):
        yield from _scans(child, here)


def _one_customer(table: str, alias: str, conditions: str) -> bool:
    """Whether `conditions` pin the scan of `table` (as `alias`) to one customer."""
    name = re.escape(alias)
    columns = ("id", "external_id") if table == "customers" else ("customer_id",)
    for column in columns:
        left = rf"(?<![\w.]){name}\.{column} = (?!ANY)"
        right = rf"= {name}\.{column}\b"
        if re.search(left, conditions) or re.search(right, conditions):
            return True
    return False


def unbounded_scans(plans: list[dict[str, Any]], scoped: set[str]) -> list[str]:
    found = []
    for plan in plans:
        for node, conditions in _scans(plan["Plan"]):
            table = node.get("Relation Name")
            if table not in scoped or node["Node Type"] == "ModifyTable":
                continue  # an INSERT names its customer in its values; UPDATEs scan below it
            if not _one_customer(table, node.get("Alias", table), conditions):
                query = " ".join(plan["Query Text"].split())[:160]
                found.append(f"{node['Node Type']} on {table}: {query}")
    return found


@pytest.mark.filterwarnings("ignore:.*active log listener")  # asyncpg's own release path
async def test_every_hot_path_statement_reads_one_customer(
    pool: asyncpg.Pool, capturing: tuple[asyncpg.Pool, Captured]
) -> None:
    """A first track (creating the customer), a replay, tracks up to and past the limit (with
    the upgrade suggestion), allowed and refused checks, an unknown customer's check and the
    entitlements read: every scan of a customer-scoped table in every statement they run is
    bounded by one customer."""
    await catalog_with(pool, limit=2, reset="month")
    scoped = {row["relname"] for row in await pool.fetch(SCOPED_TABLES)}
    one, captured = capturing
    now = datetime.now(UTC)

    def request(key: str) -> TrackRequest:
        return TrackRequest(
            customer_key="user_1", feature_key="ai_calls", amount=1, cost=None,
            idempotency_key=key, metadata={},
        )  # fmt: skip

    await usage.track(one, request("first"), now=now, grace=GRACE)
    await usage.track(one, request("first"), now=now, grace=GRACE)
    await usage.check(one, "user_1", "ai_calls", 1, now=now, grace=GRACE)
    await usage.track(one, request("second"), now=now, grace=GRACE)
    refused = await usage.track(one, request("third"), now=now, grace=GRACE)
    denied = await usage.check(one, "user_1", "ai_calls", 1, now=now, grace=GRACE)
    await usage.check(one, "nobody", "ai_calls", 1, now=now, grace=GRACE)
    await usage.entitlements(one, "user_1", now=now, grace=GRACE)

    assert refused["allowed"] is False
    assert denied["allowed"] is False
    touched = {
        node.get("Relation Name") for plan in captured.plans for node, _ in _scans(plan["Plan"])
    }
    assert {"customers", "usage_counters", "usage_events", "credit_balances"} <= touched
    assert unbounded_scans(captured.plans, scoped) == []


def test_a_scan_of_every_customer_is_caught() -> None:
    """The check itself: a scan of a customer-scoped table filtered by something else, or by a
    set of customers, is reported; one pinned by an equality on its customer, here or in a join
    above it, is not."""
    plans = [
        {"Query Text": q, "Plan": p}
        for q, p in [
            ("all", {"Node Type": "Seq Scan", "Relation Name": "usage_counters", "Alias": "uc"}),
            ("any", {
                "Node Type": "Index Scan", "Relation Name": "orders", "Alias": "o",
                "Index Cond": "(o.customer_id = ANY ($1))",
            }),
            ("other alias", {
                "Node Type": "Index Scan", "Relation Name": "orders", "Alias": "o",
                "Index Cond": "(xo.customer_id = $1)",
            }),
            ("joined", {
                "Node Type": "Hash Join", "Hash Cond": "(c.id = uc.customer_id)",
                "Plans": [
                    {"Node Type": "Seq Scan", "Relation Name": "usage_counters", "Alias": "uc"},
                    {
                        "Node Type": "Index Scan", "Relation Name": "customers", "Alias": "c",
                        "Index Cond": "(c.external_id = 'user_1'::text)",
                    },
                ],
            }),
        ]
    ]  # fmt: skip
    found = unbounded_scans(plans, {"usage_counters", "orders", "customers"})
    assert found == [
        "Seq Scan on usage_counters: all",
        "Index Scan on orders: any",
        "Index Scan on orders: other alias",
    ]
