"""The prune job: what outlived the retention goes, batch by batch; what may still matter stays."""

from __future__ import annotations

import os
import uuid

import asyncpg

from billing_service.services import api_keys, maintenance
from billing_service.services.api_keys import Scope


async def _reservation(
    pool: asyncpg.Pool, key_id: uuid.UUID, *, age_days: int, answered: bool, lease_left_s: int
) -> str:
    """An Idempotency-Key reservation made `age_days` ago, answered or still leased."""
    idempotency_key = f"idem-{uuid.uuid4()}"
    await pool.execute(
        """
        INSERT INTO idempotent_requests (api_key_id, operation, idempotency_key, request_hash,
                                         response_status, response_body, lease_token,
                                         lease_expires_at, created_at)
        VALUES ($1, 'checkout.create', $2, $3, $4, $5, $6, now() + make_interval(secs => $7),
                now() - make_interval(days => $8))
        """,
        key_id,
        idempotency_key,
        os.urandom(32),
        201 if answered else None,
        {"id": "cs_1"} if answered else None,
        uuid.uuid4(),
        lease_left_s,
        age_days,
    )
    return idempotency_key


async def test_idempotency_key_reservations_are_pruned_after_the_retention(
    pool: asyncpg.Pool,
) -> None:
    """Answered reservations and abandoned ones (lease over) older than the retention go; recent
    ones and one whose request still holds its lease stay; the run counts them."""
    key = (await api_keys.create_key(pool, name="caller", scopes=[Scope.BILLING])).key
    gone = [
        await _reservation(pool, key.id, age_days=91, answered=True, lease_left_s=-60),
        await _reservation(pool, key.id, age_days=200, answered=False, lease_left_s=-60),
    ]
    kept = [
        await _reservation(pool, key.id, age_days=89, answered=True, lease_left_s=-60),
        await _reservation(pool, key.id, age_days=1, answered=False, lease_left_s=300),
        await _reservation(pool, key.id, age_days=91, answered=False, lease_left_s=300),
    ]
    report = await maintenance.prune(pool, retention_days=90)
    left = {row["idempotency_key"] for row in await pool.fetch(
        "SELECT idempotency_key FROM idempotent_requests"
    )}  # fmt: skip
    assert left == set(kept)
    assert not left & set(gone)
    assert report.deleted["idempotent_requests"] == 2
    assert report.errors == []


async def test_a_backlog_larger_than_a_batch_is_pruned_entirely(pool: asyncpg.Pool) -> None:
    """With batches of 10: 35 old usage events, 23 old finished deliveries with their outbox
    events all go; recent rows, an old delivery still pending and its event stay."""
    customer = await pool.fetchval("INSERT INTO customers (external_id) VALUES ('c') RETURNING id")
    feature = await pool.fetchval(
        "INSERT INTO features (key, name, kind) VALUES ('ai_calls', 'AI', 'metered') RETURNING id"
    )
    await pool.execute(
        """
        INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash, amount,
                                  created_at)
        SELECT $1, $2, 'k' || n, '\\x00', 1,
               now() - make_interval(days => CASE WHEN n <= 35 THEN 91 + n ELSE 1 END)
        FROM generate_series(1, 40) AS n
        """,
        customer,
        feature,
    )
    endpoint = await pool.fetchval(
        "INSERT INTO webhook_endpoints (url, event_types, secret) "
        "VALUES ('https://hooks.example.com/in', ARRAY['usage.limit_reached'], 'whsec_x') "
        "RETURNING id"
    )
    await pool.execute(
        """
        WITH events AS (
            INSERT INTO outbox_events (type, payload, created_at)
            SELECT 'usage.limit_reached', jsonb_build_object('n', n),
                   now() - make_interval(days => CASE WHEN n <= 24 THEN 100 ELSE 2 END)
            FROM generate_series(1, 30) AS n
            RETURNING id, payload, created_at
        )
        INSERT INTO webhook_deliveries (event_id, endpoint_id, status, created_at, updated_at)
        SELECT id, $1, CASE WHEN (payload ->> 'n')::int = 24 THEN 'pending' ELSE 'delivered' END,
               created_at, created_at
        FROM events
        """,
        endpoint,
    )
    report = await maintenance.prune(pool, retention_days=90, batch_size=10)
    assert report.errors == []
    assert (report.deleted["usage_events"], report.deleted["webhook_deliveries"]) == (35, 23)
    assert report.deleted["outbox_events"] == 23
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 5
    pending = await pool.fetch(
        "SELECT d.status, o.payload ->> 'n' AS n FROM webhook_deliveries d "
        "JOIN outbox_events o ON o.id = d.event_id WHERE o.created_at < now() - interval '90 days'"
    )
    assert [(row["status"], row["n"]) for row in pending] == [("pending", "24")]
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 7
