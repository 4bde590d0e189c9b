"""Shard-ready keys: a distributed PostgreSQL (Citus, distributed by customer) can only enforce a
unique key on one shard, so every unique key of a customer-scoped table must hold the customer.

Read from the migrated schema itself (pg_index), so a new table or key that breaks the rule fails
here. The keys that break it today are listed with the reason and what would change under Citus
(docs/operations.md, "Sharding plan"); the list may only shrink.
"""

from __future__ import annotations

import asyncpg

# Customer-scoped tables and the column that names the customer: every table with a
# `customer_id` column, plus `customers` itself, whose `id` is that customer_id.
ANCHOR = {"customers": "id"}

# (table, unique index) -> why it lacks the customer today, and the change Citus would need.
EXCEPTIONS = {
    ("customers", "customers_external_id_key"): (
        "callers name customers by external id in every path; Citus: a reference table "
        "external_id -> id that routes each request, then distribute by id"
    ),
    ("customers", "customers_stripe_customer_id_key"): (
        "webhooks name the Stripe customer only; Citus: the same lookup table, keyed by it"
    ),
    ("subscriptions", "subscriptions_stripe_subscription_id_key"): (
        "webhooks find a subscription by its Stripe id; Citus: (customer_id, "
        "stripe_subscription_id) once the event's Stripe customer is resolved first"
    ),
    ("checkout_sessions", "checkout_sessions_stripe_session_id_key"): (
        "webhooks find a session by its Stripe id; Citus: (customer_id, stripe_session_id)"
    ),
    ("orders", "orders_stripe_checkout_session_id_key"): (
        "one order per Checkout session, found from the webhook; Citus: add customer_id"
    ),
    ("credit_grants", "credit_grants_order_id_feature_id_key"): (
        "one grant per order and feature, named by ON CONFLICT in db/orders.py; Citus: add "
        "customer_id, in two releases (a targetless ON CONFLICT first) so pods of the previous "
        "release keep working during a rolling update"
    ),
    ("credit_clawbacks", "credit_clawbacks_order_id_feature_id_key"): (
        "one clawback per order and feature; the same two-release change as credit_grants"
    ),
    ("customer_tokens", "customer_tokens_token_hash_key"): (
        "a browser token is looked up by its hash before the customer is known; Citus: a "
        "reference table token_hash -> customer_id, or a token that carries its customer"
    ),
    ("meter_events", "meter_events_pkey"): "surrogate id; Citus: (customer_id, id)",
    ("meter_events", "meter_events_identifier_key"): (
        "Stripe's meter event identifier, unique across the account; Citus: "
        "(customer_id, identifier), the identifier already being derived per customer"
    ),
    ("usage_events", "usage_events_pkey"): (
        "surrogate id with its month (the partition key, migration 0026); Citus: "
        "(customer_id, id, created_at)"
    ),
}

UNIQUE_KEYS = """
SELECT c.relname AS table_name,
       i.indexrelid::regclass::text AS index_name,
       array(
           SELECT a.attname::text
           FROM unnest(i.indkey) AS k(attnum)
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
       ) AS columns
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indisunique AND n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition  -- a partition's keys are its parent's
  AND (c.relname = ANY($1::text[]) OR EXISTS (
      SELECT 1 FROM pg_attribute a
      WHERE a.attrelid = c.oid AND a.attname = 'customer_id' AND NOT a.attisdropped))
ORDER BY 1, 2
"""


async def customer_scoped_unique_keys(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every unique index (primary keys and UNIQUE constraints included) of a customer-scoped
    table, with its key columns (an expression key has none)."""
    async with pool.acquire() as conn:
        return await conn.fetch(UNIQUE_KEYS, list(ANCHOR))


def lacks_customer(row: asyncpg.Record) -> bool:
    return ANCHOR.get(row["table_name"], "customer_id") not in row["columns"]


async def test_every_customer_scoped_unique_key_holds_the_customer(pool: asyncpg.Pool) -> None:
    """A unique key of a customer-scoped table without the customer fails, unless it is one of
    the listed exceptions."""
    rows = await customer_scoped_unique_keys(pool)
    assert {row["table_name"] for row in rows} >= {"usage_events", "usage_counters", "customers"}
    breaking = {(row["table_name"], row["index_name"]) for row in rows if lacks_customer(row)}
    unlisted = sorted(breaking - EXCEPTIONS.keys())
    assert unlisted == [], (
        "unique keys without customer_id on customer-scoped tables (add customer_id to the key, "
        f"see docs/operations.md 'Sharding plan'): {unlisted}"
    )


async def test_listed_exceptions_still_break_the_rule(pool: asyncpg.Pool) -> None:
    """Every listed exception still exists without the customer: one that was fixed or dropped
    leaves the list, so the list is always the true remaining work."""
    rows = await customer_scoped_unique_keys(pool)
    breaking = {(row["table_name"], row["index_name"]) for row in rows if lacks_customer(row)}
    assert sorted(EXCEPTIONS.keys() - breaking) == []


async def test_hot_path_tables_are_already_keyed_by_customer(pool: asyncpg.Pool) -> None:
    """The tables that checks and tracks write on every call are keyed by customer now: their
    counters and idempotency records route to one shard as they are."""
    rows = await customer_scoped_unique_keys(pool)
    keys = {(row["table_name"], row["index_name"]): row["columns"] for row in rows}
    assert keys[("usage_counters", "usage_counters_pkey")][0] == "customer_id"
    assert keys[("credit_balances", "credit_balances_pkey")][0] == "customer_id"
    assert keys[("feature_overrides", "feature_overrides_pkey")][0] == "customer_id"
    assert "customer_id" in keys[("usage_events", "usage_events_customer_id_idempotency_key_key")]


FOREIGN_KEYS = """
SELECT conrelid::regclass::text AS table_name, confrelid::regclass::text AS referenced,
       array(SELECT a.attname::text FROM unnest(conkey) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.attnum) AS columns
FROM pg_constraint
WHERE contype = 'f' AND connamespace = current_schema()::regnamespace
"""


async def test_customer_scoped_tables_reference_each_other_with_the_customer(
    pool: asyncpg.Pool,
) -> None:
    """A foreign key between two customer-scoped tables (a credit grant's order) holds the
    customer, so under Citus both rows live on one shard and the key can be enforced there."""
    scoped = {row["table_name"] for row in await customer_scoped_unique_keys(pool)}
    keys = await pool.fetch(FOREIGN_KEYS)
    between = [row for row in keys if {row["table_name"], row["referenced"]} <= scoped]
    assert {(row["table_name"], row["referenced"]) for row in between} >= {
        ("credit_grants", "orders"),
        ("credit_clawbacks", "orders"),
    }
    for row in between:
        if row["referenced"] != "customers":
            assert "customer_id" in row["columns"], (row["table_name"], row["referenced"])
