"""Btrack1: a whole `track` in one round trip, the floor the service's track is measured against.

`POST /v1/usage/track` takes the service's request body (so `track.lua` drives both) and makes
one call of `bench_floor.track(...)`, a plpgsql function the bench creates in its own schema of
the bench database (not a migration of ours). Against the service's real schema and data, that
one call does the work of the service's track on the path the bench exercises:

- resolves the context: the active feature by key, the customer by external id (created if
  unknown, as the service does), the subscription that counts (live statuses first, newest first)
  and whether it grants its plan (active or trialing, past_due within the grace period), else the
  default plan; that plan's allowance for the feature; the customer's credit balance;
- finds the period the allowance resets in (hour … year, `never`, the billing period);
- applies the service's conditional counter upsert (`INSERT … ON CONFLICT DO UPDATE … WHERE`
  within the cap, saturating sums) and gets the new total;
- builds the decision (the same fields as the service's answer) and, when a soft or hard limit
  is reached, emits the deduplicated outbox events with their webhook deliveries;
- inserts the idempotency key (usage_event_keys, migration 0026), then the usage event with the
  request hash, metadata and answer.

A taken idempotency key raises inside the function, which undoes the call, and the app answers
with the stored response in a second query: the service's replay path, which the bench never
takes (each request carries a fresh key). The bench's allowance (10^12) is never reached either,
so past-the-allowance handling (spending credits, overage under row locks, upgrade options on a
refusal) is left out: a refusal there is answered without recording, and the floor stays the
cost of the path measured. The request body is parsed with orjson and the request hash is the
SHA-256 of the raw body: the least Python a track needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.floors import open_pool
from billing_service.config import Settings
from billing_service.db.pool import Executor
from billing_service.db.subscriptions import LIVE_STATUSES
from billing_service.db.usage import MAX_COST, MAX_USED


def function_sql() -> str:
    """`CREATE FUNCTION bench_floor.track`, with the service's constants written in."""
    grace_days = Settings.model_fields["past_due_grace_days"].default
    live = ", ".join(f"'{status}'" for status in LIVE_STATUSES)
    return (
        _FUNCTION.replace("{LIVE}", live)
        .replace("{GRACE}", f"{int(grace_days)} days")
        .replace("{MAX_USED}", str(MAX_USED))
        .replace("{MAX_COST}", str(MAX_COST))
    )


_FUNCTION = """
CREATE SCHEMA IF NOT EXISTS bench_floor;

CREATE OR REPLACE FUNCTION bench_floor.track(
    p_customer text, p_feature text, p_amount bigint, p_cost numeric, p_key text,
    p_hash bytea, p_metadata jsonb
) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    ctx record;
    v_customer uuid;
    v_unit text;
    v_start timestamptz;
    v_end timestamptz;
    v_used bigint;
    v_response json;
    v_payload jsonb;
    v_window text;
BEGIN
    SELECT f.id AS feature_id, f.kind, c.id AS customer_id,
           a.enabled, a."limit", a.soft_limit, a.reset,
           coalesce(s.granting, false) AS granting, s.current_period_start, s.current_period_end,
           coalesce(cb.granted - cb.spent, 0) AS credits
    INTO ctx
    FROM features f
    LEFT JOIN customers c ON c.external_id = p_customer
    LEFT JOIN LATERAL (
        SELECT p.plan_id, s.current_period_start, s.current_period_end,
               p.plan_id IS NOT NULL AND (
                   s.status IN ('active', 'trialing')
                   OR (s.status = 'past_due'
                       AND now() < coalesce(s.past_due_since, now()) + interval '{GRACE}')
               ) AS granting
        FROM subscriptions s LEFT JOIN prices p ON p.id = s.price_id
        WHERE s.customer_id = c.id
        ORDER BY s.status = ANY (ARRAY[{LIVE}]) DESC, s.stripe_created_at DESC
        LIMIT 1
    ) s ON true
    LEFT JOIN LATERAL (
        SELECT pf.enabled, pf."limit", pf.soft_limit, pf.reset
        FROM plan_features pf
        WHERE pf.feature_id = f.id
          AND pf.plan_id = CASE WHEN s.granting THEN s.plan_id
                                ELSE (SELECT id FROM plans WHERE is_default) END
    ) a ON true
    LEFT JOIN credit_balances cb ON cb.customer_id = c.id AND cb.feature_id = f.id
    WHERE f.active AND f.key = p_feature;
    IF NOT FOUND THEN
        RETURN NULL;  -- no such feature
    END IF;

    v_customer := ctx.customer_id;
    IF v_customer IS NULL THEN
        INSERT INTO customers (external_id) VALUES (p_customer)
        ON CONFLICT (external_id) DO NOTHING RETURNING id INTO v_customer;
        IF v_customer IS NULL THEN
            SELECT id INTO v_customer FROM customers WHERE external_id = p_customer;
        END IF;
    END IF;

    IF ctx.enabled IS NOT TRUE OR ctx.kind <> 'metered' THEN
        v_response := json_build_object(
            'allowed', coalesce(ctx.enabled, false), 'feature', p_feature, 'used', 0,
            'limit', NULL, 'remaining', NULL, 'soft_limit_reached', false, 'resets_at', NULL,
            'recorded', false);
    ELSE
        IF ctx.reset = 'never' THEN
            v_start := '1970-01-01T00:00:00Z';
            v_end := NULL;
        ELSIF ctx.reset = 'billing_period' AND ctx.granting
              AND now() >= ctx.current_period_start AND now() < ctx.current_period_end THEN
            v_start := ctx.current_period_start;
            v_end := ctx.current_period_end;
        ELSE
            v_unit := CASE ctx.reset WHEN 'billing_period' THEN 'month' ELSE ctx.reset END;
            v_start := date_trunc(v_unit, now(), 'UTC');
            v_end := v_start + ('1 ' || v_unit)::interval;
        END IF;

        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used, cost)
        SELECT v_customer, ctx.feature_id, v_start, v_end, greatest(p_amount, 0),
               least(coalesce(p_cost, 0), {MAX_COST})
        WHERE ctx."limit" IS NULL OR p_amount <= ctx."limit"
        ON CONFLICT (customer_id, feature_id, period_start) DO UPDATE
        SET used = least(greatest(usage_counters.used::numeric + p_amount, 0), {MAX_USED})::bigint,
            cost = least(usage_counters.cost + coalesce(p_cost, 0), {MAX_COST})
        WHERE ctx."limit" IS NULL OR p_amount <= 0
              OR usage_counters.used::numeric + p_amount <= ctx."limit"
        RETURNING used INTO v_used;

        v_response := json_build_object(
            'allowed', v_used IS NOT NULL, 'feature', p_feature, 'used', coalesce(v_used, 0),
            'limit', ctx."limit",
            'remaining', CASE WHEN ctx."limit" IS NULL THEN NULL
                              ELSE greatest(0, ctx."limit" - coalesce(v_used, 0)) + ctx.credits
                         END,
            'soft_limit_reached', ctx.soft_limit IS NOT NULL AND v_used >= ctx.soft_limit,
            'resets_at', v_end, 'recorded', v_used IS NOT NULL);

        IF v_used IS NOT NULL AND (v_used >= ctx.soft_limit OR v_used >= ctx."limit") THEN
            v_payload := jsonb_build_object(
                'customer_id', p_customer, 'feature', p_feature, 'used', v_used,
                'soft_limit', ctx.soft_limit, 'limit', ctx."limit",
                'period_start', v_start, 'resets_at', v_end);
            v_window := v_customer || ':' || ctx.feature_id || ':' || v_start;
            WITH event AS (
                INSERT INTO outbox_events (type, payload, dedupe_key)
                SELECT t.type, v_payload, t.type || ':' || v_window
                FROM (VALUES ('usage.soft_limit_reached', ctx.soft_limit),
                             ('usage.limit_reached', ctx."limit")) AS t (type, threshold)
                WHERE t.threshold IS NOT NULL AND v_used >= t.threshold
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING id, type
            )
            INSERT INTO webhook_deliveries (event_id, endpoint_id)
            SELECT event.id, e.id FROM event, webhook_endpoints e
            WHERE e.enabled AND event.type = ANY (e.event_types);
        END IF;
    END IF;

    INSERT INTO usage_event_keys (customer_id, idempotency_key) VALUES (v_customer, p_key)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key already used';  -- undoes the call; the app replays
    END IF;
    INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash, amount,
                              cost, metadata, recorded, period_start, response)
    VALUES (v_customer, ctx.feature_id, p_key, p_hash, p_amount, p_cost, p_metadata,
            v_used IS NOT NULL, CASE WHEN v_used IS NOT NULL THEN v_start END, v_response);
    RETURN v_response::text;
END
$fn$;
"""

_CALL = "SELECT bench_floor.track($1, $2, $3, $4, $5, $6, $7::jsonb)"
_REPLAY = """
SELECT e.response::text FROM customers c
JOIN usage_event_keys k ON k.customer_id = c.id AND k.idempotency_key = $2
JOIN usage_events e ON e.customer_id = k.customer_id AND e.idempotency_key = k.idempotency_key
                    AND e.created_at = k.created_at
WHERE c.external_id = $1
"""
_NOT_FOUND = b'{"title":"Not Found","status":404}'


async def install(executor: Executor) -> None:
    """Create (or replace) the floor's function in the database `executor` is on."""
    await executor.execute(function_sql())


class OneStatementTrack:
    """The app's one route: parse, one call, answer."""

    _pool: asyncpg.Pool

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        """Open the pool for the app's life."""
        self._pool = await open_pool()
        yield
        await self._pool.close()

    async def endpoint(self, request: Request) -> Response:
        """Parse, one call of the function (or the replay query), answer its JSON."""
        raw = await request.body()
        body = orjson.loads(raw)
        cost = body.get("cost")
        try:
            answer = await self._pool.fetchval(
                _CALL,
                body["customer_id"],
                body["feature"],
                body.get("amount", 1),
                None if cost is None else Decimal(str(cost)),
                body["idempotency_key"],
                hashlib.sha256(raw).digest(),
                orjson.dumps(body.get("metadata") or {}).decode(),
            )
        except asyncpg.RaiseError:
            answer = await self._pool.fetchval(
                _REPLAY, body["customer_id"], body["idempotency_key"]
            )
        if answer is None:
            return Response(_NOT_FOUND, status_code=404, media_type="application/problem+json")
        return Response(answer, media_type="application/json")


_track = OneStatementTrack()
app = Starlette(
    routes=[Route("/v1/usage/track", _track.endpoint, methods=["POST"])],
    lifespan=_track.lifespan,
)
