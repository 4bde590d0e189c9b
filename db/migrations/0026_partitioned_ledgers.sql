-- Partitioned ledgers: `usage_events` and `stripe_events`, the two tables that grow with every
-- call and every webhook, are partitioned by UTC month, so the retention drops a month whole
-- instead of deleting its rows one by one. Existing rows move into the new tables, every one.
-- docs/operations.md ("Partitions and retention") says what the prune job does with them.
--
-- A unique key of a partitioned table must hold the partition key, so each idempotency
-- guarantee is rebuilt to stay exact:
-- * stripe_events is partitioned by `stripe_created_at`, which Stripe sets once per event: every
--   copy of an event carries it, lands in the same partition, and meets the same
--   (stripe_event_id, stripe_created_at) key there.
-- * usage_events is partitioned by `created_at`, the moment of the call, which a replay does not
--   share. The key that makes a track count once moves to `usage_event_keys`, one unpartitioned
--   narrow row per (customer, idempotency key) holding the moment its event was written:
--   usage_track inserts the key before the event, so a concurrent twin waits on that primary key
--   and then fails (and replays), whichever month either would land in; a replay reads the key,
--   then its event in that one partition.
--
-- The outbox tables (outbox_events, webhook_deliveries, email_deliveries, meter_events) stay as
-- they are: they grow with notifications and billed overage, not with every call; deliveries
-- point at their outbox event by foreign key and are pruned by state (a pending delivery stays
-- whatever its age), and meter events are kept for good (they are what Stripe billed).

-- Month partitions, named <table>_yYYYYmMM, cover [first of the month, first of the next) in UTC;
-- `<table>_default` takes the rows of any month that has none. ensure_month_partitions makes the
-- partition of every month from p_from's to p_until's that is missing, moving that month's rows
-- out of the default partition into it first; it returns how many it made. The migration, the
-- prune job (services/partitions.py) and data seeds call it.
CREATE FUNCTION ensure_month_partitions(p_table text, p_from timestamptz, p_until timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_column text;
    v_month timestamp := date_trunc('month', p_from AT TIME ZONE 'UTC');
    v_last timestamp := date_trunc('month', p_until AT TIME ZONE 'UTC');
    v_name text;
    v_start timestamptz;
    v_end timestamptz;
    v_made integer := 0;
BEGIN
    SELECT a.attname INTO STRICT v_column
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = p_table::regclass;
    WHILE v_month <= v_last LOOP
        v_name := p_table || to_char(v_month, '"_y"YYYY"m"MM');
        v_start := v_month AT TIME ZONE 'UTC';
        v_end := (v_month + interval '1 month') AT TIME ZONE 'UTC';
        IF to_regclass(quote_ident(v_name)) IS NULL THEN
            -- Made beside the table and attached (a lighter lock on the parent than CREATE
            -- TABLE … PARTITION OF), with the default partition locked meanwhile so that no row
            -- of the month reaches it between the move and the attach.
            EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', p_table || '_default');
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           v_name, p_table);
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                           'INSERT INTO %I SELECT * FROM moved',
                           p_table || '_default', v_column, v_column, v_name)
                USING v_start, v_end;
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           p_table, v_name, v_start, v_end);
            v_made := v_made + 1;
        END IF;
        v_month := v_month + interval '1 month';
    END LOOP;
    RETURN v_made;
END
$fn$;

-- The usage ledger.
ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
ALTER INDEX usage_events_pkey RENAME TO usage_events_unpartitioned_pkey;
ALTER INDEX usage_events_customer_id_idempotency_key_key RENAME TO usage_events_unpartitioned_key;
DROP INDEX usage_events_created;

CREATE TABLE usage_events (
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL
                     CONSTRAINT usage_events_customer_id_fkey REFERENCES customers (id),
    feature_id       uuid NOT NULL
                     CONSTRAINT usage_events_feature_id_fkey REFERENCES features (id),
    idempotency_key  text NOT NULL CONSTRAINT usage_events_idempotency_key_check
                     CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    amount           bigint NOT NULL,
    cost             numeric(30, 12),
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded         boolean NOT NULL DEFAULT false,
    period_start     timestamptz,
    response         json,  -- json, not jsonb: replays keep the key order byte for byte
    member_id        text,  -- the member a track is for (migration 0025)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_events_pkey PRIMARY KEY (id, created_at),
    -- A replay's lookup, in the one partition its key names (usage_event_keys.created_at).
    CONSTRAINT usage_events_customer_id_idempotency_key_key
        UNIQUE (customer_id, idempotency_key, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;
-- Rows land here only when their month has no partition (the prune job makes them months
-- ahead); the prune deletes them by age through this index.
CREATE INDEX usage_events_default_created ON usage_events_default (created_at);

CREATE TRIGGER usage_events_set_updated_at BEFORE UPDATE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- One row per usage event: the idempotency key of a track, remembered for as long as its event
-- (the prune job deletes the keys of a month before it drops the month's partition).
CREATE TABLE usage_event_keys (
    customer_id      uuid NOT NULL,
    idempotency_key  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),  -- = its usage event's created_at
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, idempotency_key)
);

CREATE TRIGGER usage_event_keys_set_updated_at BEFORE UPDATE ON usage_event_keys
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A partition for every month of the last three years that has rows (older rows go to the
-- default partition, which the prune empties by age), this month and the next three.
SELECT ensure_month_partitions('usage_events', m.month, m.month)
FROM (SELECT DISTINCT date_trunc('month', created_at, 'UTC') AS month
      FROM usage_events_unpartitioned
      WHERE created_at >= now() - interval '3 years'
        AND created_at < now() + interval '3 months') AS m;
SELECT ensure_month_partitions('usage_events', now(), now() + interval '3 months');

INSERT INTO usage_events (id, customer_id, feature_id, idempotency_key, request_hash, amount,
                          cost, metadata, recorded, period_start, response, member_id,
                          created_at, updated_at)
SELECT id, customer_id, feature_id, idempotency_key, request_hash, amount, cost, metadata,
       recorded, period_start, response, member_id, created_at, updated_at
FROM usage_events_unpartitioned;

INSERT INTO usage_event_keys (customer_id, idempotency_key, created_at, updated_at)
SELECT customer_id, idempotency_key, created_at, created_at FROM usage_events_unpartitioned;

DROP TABLE usage_events_unpartitioned;

-- The Stripe webhook ledger.
ALTER TABLE stripe_events RENAME TO stripe_events_unpartitioned;
ALTER INDEX stripe_events_pkey RENAME TO stripe_events_unpartitioned_pkey;
ALTER INDEX stripe_events_stripe_event_id_key RENAME TO stripe_events_unpartitioned_key;
DROP INDEX stripe_events_due;
DROP INDEX stripe_events_status;
DROP INDEX stripe_events_type;
DROP INDEX stripe_events_customer;

CREATE TABLE stripe_events (
    id                 uuid NOT NULL DEFAULT gen_random_uuid(),
    stripe_event_id    text NOT NULL,
    type               text NOT NULL,
    livemode           boolean NOT NULL,
    api_version        text,
    stripe_created_at  timestamptz NOT NULL,
    object_id          text,
    payload            jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'pending' CONSTRAINT stripe_events_status_check
                       CHECK (status IN ('pending', 'processed', 'failed')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    processed_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stripe_events_pkey PRIMARY KEY (id, stripe_created_at),
    -- Intake's dedup (INSERT … ON CONFLICT): every copy of an event has its stripe_created_at.
    CONSTRAINT stripe_events_stripe_event_id_key UNIQUE (stripe_event_id, stripe_created_at)
) PARTITION BY RANGE (stripe_created_at);

CREATE TABLE stripe_events_default PARTITION OF stripe_events DEFAULT;

CREATE INDEX stripe_events_due ON stripe_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX stripe_events_status ON stripe_events (status, created_at);
CREATE INDEX stripe_events_type ON stripe_events (type, created_at);
-- Keep in step with EVENT_CUSTOMER in billing_service/db/stripe_events.py (as in 0024).
CREATE INDEX stripe_events_customer ON stripe_events ((coalesce(
    payload #>> '{data,object,customer}',
    CASE WHEN payload #>> '{data,object,object}' = 'customer' THEN object_id END
)), created_at);

CREATE TRIGGER stripe_events_set_updated_at BEFORE UPDATE ON stripe_events
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

SELECT ensure_month_partitions('stripe_events', m.month, m.month)
FROM (SELECT DISTINCT date_trunc('month', stripe_created_at, 'UTC') AS month
      FROM stripe_events_unpartitioned
      WHERE stripe_created_at >= now() - interval '3 years'
        AND stripe_created_at < now() + interval '3 months') AS m;
SELECT ensure_month_partitions('stripe_events', now(), now() + interval '3 months');

INSERT INTO stripe_events (id, stripe_event_id, type, livemode, api_version, stripe_created_at,
                           object_id, payload, status, attempts, next_attempt_at, last_error,
                           processed_at, created_at, updated_at)
SELECT id, stripe_event_id, type, livemode, api_version, stripe_created_at, object_id, payload,
       status, attempts, next_attempt_at, last_error, processed_at, created_at, updated_at
FROM stripe_events_unpartitioned;

DROP TABLE stripe_events_unpartitioned;

-- Track as in migration 0025, with the idempotency key in usage_event_keys: the context reads
-- the key (its moment) instead of the event; a replay then reads its event in that moment's
-- partition; a new call inserts the key, then the event with the key's moment.
CREATE OR REPLACE FUNCTION usage_track(
    p_customer text, p_feature text, p_amount bigint, p_cost numeric, p_key text,
    p_hash bytea, p_metadata jsonb, p_now timestamptz, p_grace interval, p_member text,
    OUT outcome text, OUT response json
)
LANGUAGE plpgsql
AS $fn$
DECLARE
    max_used CONSTANT numeric := 9223372036854775807;
    max_cost CONSTANT numeric := 999999999999999999.999999999999;
    ctx record;
    v_stored_hash bytea;
    v_stored_response json;
    v_created timestamptz;
    v_customer uuid;
    v_plan_key text;
    v_enabled boolean;
    v_limit bigint;
    v_soft bigint;
    v_overage_policy text;
    v_start timestamptz;
    v_end timestamptz;
    v_used bigint;
    v_current bigint;
    v_credits bigint;
    v_from_allowance bigint;
    v_spent bigint := 0;
    v_overage boolean := false;
    v_reason text;
    v_upgrade json;
    v_recorded boolean := false;
    v_remaining numeric;
    v_soft_reached boolean;
    v_resets_at text;
    v_start_iso text;
    v_event_type text;
    v_threshold bigint;
    v_payload jsonb;
    v_left bigint;
    v_take bigint;
    v_balance bigint;
    v_balance_spent boolean := false;
    v_lot record;
    v_member_limit bigint;
    v_member_used bigint;
    v_member_counted boolean := false;
BEGIN
    -- 1. The context (db/usage.py _CONTEXT for one feature).
    SELECT f.id AS feature_id, f.kind, c.id AS customer_id,
           CASE WHEN s.granted THEN s.plan_key ELSE d.key END AS plan_key,
           coalesce(a.enabled, false) AS enabled, a."limit", a.soft_limit, a.overage,
           -- A per-seat allowance counts once per seat of the subscription granting it.
           CASE WHEN a.per_seat AND s.granted THEN greatest(s.quantity, 1) ELSE 1 END AS seats,
           a.member_limit,
           coalesce(cb.granted - cb.spent, 0) + coalesce(cl.available, 0) AS credits,
           o.present IS NOT NULL AS overridden, o."limit" AS override_limit,
           w.window_start, w.window_end,
           k.created_at AS stored_at
    INTO ctx
    FROM features f
    LEFT JOIN customers c ON c.external_id = p_customer
    -- Joined by key through LATERAL … LIMIT 1 so that the cached (generic) plan probes indexes
    -- rather than hashing tables that grow.
    LEFT JOIN LATERAL (
        -- The access policy (services/access.py grants_plan_status).
        SELECT pl.id IS NOT NULL AND (s.status IN ('active', 'trialing')
                   OR (s.status = 'past_due'
                       AND coalesce(s.past_due_since, p_now) + p_grace > p_now)) AS granted,
               p.plan_id, pl.key AS plan_key, s.quantity, s.current_period_start,
               least(s.current_period_end, s.cancel_at) AS current_period_end,
               CASE WHEN s.cancel_at_period_end OR s.cancel_at <= s.current_period_end THEN NULL
                    ELSE p.recurring_interval END AS billing_interval
        FROM subscriptions s
        LEFT JOIN prices p ON p.id = s.price_id
        LEFT JOIN plans pl ON pl.id = p.plan_id
        WHERE s.customer_id = c.id
        ORDER BY (pl.id IS NOT NULL AND (s.status IN ('active', 'trialing')
                  OR (s.status = 'past_due' AND (p_grace IS NULL
                      OR coalesce(s.past_due_since, p_now) + p_grace > p_now)))) DESC,
                 s.status IN ('trialing', 'active', 'past_due', 'unpaid', 'paused') DESC,
                 pl.id IS NOT NULL DESC,
                 CASE WHEN s.status IN ('trialing', 'active', 'past_due', 'unpaid', 'paused')
                      THEN pl.display_order END DESC NULLS LAST,
                 s.status IN ('active', 'trialing') DESC,
                 s.stripe_created_at DESC
        LIMIT 1
    ) s ON true
    LEFT JOIN plans d ON d.is_default
    -- The allowance of the plan granted now, else the default plan's.
    LEFT JOIN LATERAL (
        SELECT enabled, "limit", soft_limit, reset, overage, per_seat, member_limit
        FROM plan_features
        WHERE plan_id = CASE WHEN s.granted THEN s.plan_id ELSE d.id END AND feature_id = f.id
        LIMIT 1
    ) a ON true
    LEFT JOIN LATERAL (
        SELECT granted, spent FROM credit_balances
        WHERE customer_id = c.id AND feature_id = f.id LIMIT 1
    ) cb ON true
    -- Granted credits count until they expire (migration 0022).
    LEFT JOIN LATERAL (
        SELECT sum(granted - spent) AS available FROM credit_lots
        WHERE customer_id = c.id AND feature_id = f.id
          AND (expires_at IS NULL OR expires_at > p_now)
    ) cl ON true
    -- One customer's own limit of the feature, whatever the plan says (migration 0022).
    LEFT JOIN LATERAL (
        SELECT true AS present, "limit" FROM feature_overrides
        WHERE customer_id = c.id AND feature_id = f.id LIMIT 1
    ) o ON true
    -- Its window: the billing period only under the subscribed plan (periods.period_for).
    LEFT JOIN usage_window(coalesce(a.reset, 'month'), p_now,
                           CASE WHEN s.granted THEN s.current_period_start END,
                           CASE WHEN s.granted THEN s.current_period_end END,
                           CASE WHEN s.granted THEN s.billing_interval END) w
           ON f.kind = 'metered'
    -- The key's usage event, if any, is found by its moment: one partition (migration 0026).
    LEFT JOIN LATERAL (
        SELECT uk.created_at FROM usage_event_keys uk
        WHERE uk.customer_id = c.id AND uk.idempotency_key = p_key LIMIT 1
    ) k ON true
    WHERE f.active AND f.key = p_feature;
    IF NOT FOUND THEN
        outcome := 'no_feature';
        RETURN;
    END IF;

    -- 2. A replay of a recorded call.
    v_customer := ctx.customer_id;
    IF ctx.stored_at IS NOT NULL THEN
        SELECT ue.request_hash, ue.response INTO v_stored_hash, v_stored_response
        FROM usage_events ue
        WHERE ue.customer_id = v_customer AND ue.idempotency_key = p_key
          AND ue.created_at = ctx.stored_at;
        outcome := CASE WHEN v_stored_hash = p_hash THEN 'replayed' ELSE 'reused' END;
        response := CASE WHEN outcome = 'replayed' THEN v_stored_response END;
        RETURN;
    ELSIF p_member IS NOT NULL AND (v_customer IS NULL OR NOT EXISTS (
              SELECT 1 FROM members WHERE customer_id = v_customer AND member_id = p_member)) THEN
        outcome := 'no_member';  -- only a member holding a seat is counted
        RETURN;
    ELSIF v_customer IS NULL THEN
        INSERT INTO customers (external_id) VALUES (p_customer)
        ON CONFLICT (external_id) DO NOTHING RETURNING id INTO v_customer;
        IF v_customer IS NULL THEN  -- created meanwhile by a concurrent call, now committed
            SELECT id INTO STRICT v_customer FROM customers WHERE external_id = p_customer;
        END IF;
    END IF;

    v_plan_key := ctx.plan_key;
    v_enabled := ctx.enabled OR ctx.overridden;
    v_limit := CASE WHEN ctx.overridden THEN ctx.override_limit
                    WHEN ctx.seats = 1 OR ctx."limit" IS NULL THEN ctx."limit"
                    ELSE least(ctx."limit"::numeric * ctx.seats, max_used)::bigint END;
    v_soft := CASE WHEN ctx.seats = 1 OR ctx.soft_limit IS NULL THEN ctx.soft_limit
                   ELSE least(ctx.soft_limit::numeric * ctx.seats, max_used)::bigint END;
    v_overage_policy := ctx.overage;
    v_credits := ctx.credits;
    v_used := 0;

    IF NOT v_enabled THEN
        v_limit := NULL; v_soft := NULL;
        v_reason := 'feature_not_in_plan';
    ELSIF ctx.kind = 'metered' THEN
        -- 3. The window and the counter.
        v_start := ctx.window_start;
        v_end := ctx.window_end;
        v_used := NULL;
        IF p_member IS NOT NULL THEN
            -- The member's counter first, against the member's own limit, under its row lock.
            v_member_limit := ctx.member_limit;
            INSERT INTO member_usage_counters AS mc (customer_id, member_id, feature_id,
                                                     period_start, period_end, used)
            SELECT v_customer, p_member, ctx.feature_id, v_start, v_end, greatest(p_amount, 0)
            WHERE v_member_limit IS NULL OR p_amount <= v_member_limit
            ON CONFLICT (customer_id, member_id, feature_id, period_start) DO UPDATE
            SET used = least(greatest(mc.used::numeric + p_amount, 0), max_used)::bigint
            WHERE v_member_limit IS NULL OR p_amount <= 0
               OR mc.used::numeric + p_amount <= v_member_limit
            RETURNING mc.used INTO v_member_used;
            v_member_counted := v_member_used IS NOT NULL;
            IF NOT v_member_counted THEN
                v_reason := 'member_limit_reached';
                SELECT used INTO v_member_used FROM member_usage_counters
                WHERE customer_id = v_customer AND member_id = p_member
                  AND feature_id = ctx.feature_id AND period_start = v_start;
                SELECT used INTO v_used FROM usage_counters
                WHERE customer_id = v_customer AND feature_id = ctx.feature_id
                  AND period_start = v_start;
                v_used := coalesce(v_used, 0);
            END IF;
        END IF;
    END IF;
    IF v_reason IS NULL AND v_enabled AND ctx.kind = 'metered' THEN
        INSERT INTO usage_counters AS uc (customer_id, feature_id, period_start, period_end,
                                          used, cost)
        SELECT v_customer, ctx.feature_id, v_start, v_end, greatest(p_amount, 0),
               least(coalesce(p_cost, 0), max_cost)
        WHERE v_limit IS NULL OR p_amount <= v_limit
        ON CONFLICT (customer_id, feature_id, period_start) DO UPDATE
        SET used = least(greatest(uc.used::numeric + p_amount, 0), max_used)::bigint,
            cost = least(uc.cost + coalesce(p_cost, 0), max_cost)
        WHERE v_limit IS NULL OR p_amount <= 0 OR uc.used::numeric + p_amount <= v_limit
        RETURNING uc.used INTO v_used;

        IF v_used IS NULL THEN
            -- Past the allowance: credits, then overage if the plan allows it, under row locks
            -- on the counter and then the credit balance.
            INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end)
            VALUES (v_customer, ctx.feature_id, v_start, v_end) ON CONFLICT DO NOTHING;
            SELECT used INTO v_current FROM usage_counters
            WHERE customer_id = v_customer AND feature_id = ctx.feature_id
              AND period_start = v_start
            FOR UPDATE;
            SELECT granted - spent INTO v_credits FROM credit_balances
            WHERE customer_id = v_customer AND feature_id = ctx.feature_id
            FOR UPDATE;
            v_balance := coalesce(v_credits, 0);
            v_credits := v_balance + coalesce((
                SELECT sum(l.granted - l.spent) FROM (
                    SELECT granted, spent FROM credit_lots
                    WHERE customer_id = v_customer AND feature_id = ctx.feature_id
                      AND (expires_at IS NULL OR expires_at > p_now)
                    ORDER BY id
                    FOR UPDATE
                ) l), 0);
            v_from_allowance := greatest(0, least(p_amount, v_limit - v_current));
            v_spent := least(p_amount - v_from_allowance, v_credits);
            v_overage := v_from_allowance + v_spent < p_amount;
            IF v_overage AND v_overage_policy IS DISTINCT FROM 'allow'
               AND v_overage_policy IS DISTINCT FROM 'bill' THEN
                v_used := v_current;
                v_spent := 0;
                v_overage := false;
                v_reason := 'limit_reached';
            ELSE
                UPDATE usage_counters
                SET used = least(used::numeric + p_amount, max_used)::bigint,
                    cost = least(cost + coalesce(p_cost, 0), max_cost)
                WHERE customer_id = v_customer AND feature_id = ctx.feature_id
                  AND period_start = v_start
                RETURNING used INTO v_used;
                -- Granted credits that expire go first (the soonest first), then bought
                -- ones, then granted ones that never expire.
                v_left := v_spent;
                FOR v_lot IN
                    SELECT id, granted - spent AS available, expires_at IS NULL AS lasting
                    FROM credit_lots
                    WHERE customer_id = v_customer AND feature_id = ctx.feature_id
                      AND (expires_at IS NULL OR expires_at > p_now) AND spent < granted
                    ORDER BY expires_at NULLS LAST, id
                LOOP
                    IF v_lot.lasting AND NOT v_balance_spent THEN
                        v_balance_spent := true;
                        v_take := least(v_left, v_balance);
                        IF v_take > 0 THEN
                            UPDATE credit_balances SET spent = spent + v_take
                            WHERE customer_id = v_customer AND feature_id = ctx.feature_id;
                            v_left := v_left - v_take;
                        END IF;
                    END IF;
                    EXIT WHEN v_left <= 0;
                    v_take := least(v_left, v_lot.available);
                    UPDATE credit_lots SET spent = spent + v_take WHERE id = v_lot.id;
                    v_left := v_left - v_take;
                END LOOP;
                IF v_left > 0 AND NOT v_balance_spent THEN  -- the bought ones cover the rest
                    UPDATE credit_balances SET spent = spent + v_left
                    WHERE customer_id = v_customer AND feature_id = ctx.feature_id;
                END IF;
                v_credits := v_credits - v_spent;
            END IF;
        END IF;
        IF v_member_counted AND v_reason IS NOT NULL THEN
            -- The team refused: the member's counter goes back, its lock held all along.
            UPDATE member_usage_counters
            SET used = least(greatest(used::numeric - p_amount, 0), max_used)::bigint
            WHERE customer_id = v_customer AND member_id = p_member
              AND feature_id = ctx.feature_id AND period_start = v_start
            RETURNING used INTO v_member_used;
        END IF;
    END IF;
    v_recorded := v_enabled AND ctx.kind = 'metered' AND v_reason IS NULL;

    -- 4. The answer (services/usage.py _decision, key for key).
    IF v_reason IS NOT NULL AND v_reason <> 'member_limit_reached' THEN
        SELECT json_build_object('plan', o.plan_key, 'price', o.price_key) INTO v_upgrade
        FROM usage_upgrade_options(ctx.feature_id,
                                   least(v_used::numeric + greatest(p_amount, 1), max_used)::bigint,
                                   v_customer) o
        WHERE o.plan_key IS DISTINCT FROM v_plan_key
        LIMIT 1;
    END IF;
    v_remaining := CASE WHEN v_enabled AND ctx.kind = 'metered' AND v_limit IS NOT NULL
                        THEN greatest(0, v_limit::numeric - v_used) + v_credits END;
    v_soft_reached := v_soft IS NOT NULL AND v_used >= v_soft;
    -- Moments as Python's datetime.isoformat() writes them (UTC).
    v_resets_at := to_char(v_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                   || CASE WHEN date_trunc('second', v_end) = v_end THEN ''
                           ELSE to_char(v_end AT TIME ZONE 'UTC', '.US') END || '+00:00';
    v_start_iso := to_char(v_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                   || CASE WHEN date_trunc('second', v_start) = v_start THEN ''
                           ELSE to_char(v_start AT TIME ZONE 'UTC', '.US') END || '+00:00';
    IF v_reason IS NOT NULL THEN
        response := json_build_object(
            'allowed', false, 'feature', p_feature, 'used', v_used, 'limit', v_limit,
            'remaining', v_remaining, 'soft_limit_reached', v_soft_reached,
            'resets_at', v_resets_at, 'reason', v_reason, 'upgrade', v_upgrade,
            'recorded', false);
    ELSIF v_overage THEN
        response := json_build_object(
            'allowed', true, 'feature', p_feature, 'used', v_used, 'limit', v_limit,
            'remaining', v_remaining, 'soft_limit_reached', v_soft_reached,
            'resets_at', v_resets_at, 'recorded', true, 'overage', true);
    ELSE
        response := json_build_object(
            'allowed', true, 'feature', p_feature, 'used', v_used, 'limit', v_limit,
            'remaining', v_remaining, 'soft_limit_reached', v_soft_reached,
            'resets_at', v_resets_at, 'recorded', v_recorded);
    END IF;
    IF p_member IS NOT NULL THEN  -- the member's own standing, last (the keys keep their order)
        response := (left(response::text, -1) || ', "member" : ' || json_build_object(
            'id', p_member, 'used', CASE WHEN ctx.kind = 'metered' AND v_enabled
                                         THEN coalesce(v_member_used, 0) END,
            'limit', v_member_limit,
            'remaining', CASE WHEN v_member_limit IS NOT NULL
                              THEN greatest(0, v_member_limit - coalesce(v_member_used, 0)) END
        )::text || '}')::json;
    END IF;

    -- The key first: its primary key is what makes a concurrent twin wait and then fail here,
    -- whichever month partition either event would land in (migration 0026).
    INSERT INTO usage_event_keys (customer_id, idempotency_key) VALUES (v_customer, p_key)
    ON CONFLICT DO NOTHING
    RETURNING created_at INTO v_created;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'usage event % exists', p_key USING ERRCODE = 'BS001';
    END IF;
    INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash, amount,
                              cost, metadata, recorded, period_start, response, member_id,
                              created_at)
    VALUES (v_customer, ctx.feature_id, p_key, p_hash, p_amount, p_cost, p_metadata,
            v_recorded, CASE WHEN v_recorded THEN v_start END, response, p_member, v_created);

    -- Billed overage: the units past the allowance and the credits, for Stripe's meter, under
    -- an identifier derived from this usage event (customer and idempotency key).
    IF v_overage AND v_overage_policy = 'bill' THEN
        INSERT INTO meter_events (customer_id, feature_id, event_name, identifier, value,
                                  occurred_at)
        VALUES (v_customer, ctx.feature_id, p_feature,
                'usage_' || md5(v_customer::text || ':' || p_key),
                p_amount - v_from_allowance - v_spent, p_now);
    END IF;

    -- Soft and hard limits reached: told once per window (db/outbox.py emit, dedupe_key).
    IF v_recorded THEN
        v_payload := jsonb_build_object(
            'customer_id', p_customer, 'feature', p_feature, 'used', v_used,
            'soft_limit', v_soft, 'limit', v_limit, 'period_start', v_start_iso,
            'resets_at', v_resets_at);
        FOREACH v_event_type IN ARRAY ARRAY['usage.soft_limit_reached', 'usage.limit_reached']
        LOOP
            v_threshold := CASE v_event_type WHEN 'usage.soft_limit_reached' THEN v_soft
                                             ELSE v_limit END;
            CONTINUE WHEN v_threshold IS NULL OR v_used < v_threshold;
            WITH event AS (
                INSERT INTO outbox_events (type, payload, dedupe_key)
                VALUES (v_event_type, v_payload,
                        v_event_type || ':' || v_customer || ':' || ctx.feature_id || ':'
                        || v_start_iso)
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING id
            )
            INSERT INTO webhook_deliveries (event_id, endpoint_id)
            SELECT event.id, e.id FROM event, webhook_endpoints e
            WHERE e.enabled AND v_event_type = ANY (e.event_types);
        END LOOP;
    END IF;

    -- A member's own limit reached: told once per member and window.
    IF v_recorded AND v_member_limit IS NOT NULL AND v_member_used >= v_member_limit THEN
        WITH event AS (
            INSERT INTO outbox_events (type, payload, dedupe_key)
            VALUES ('member.limit_reached',
                    jsonb_build_object('customer_id', p_customer, 'member_id', p_member,
                                       'feature', p_feature, 'used', v_member_used,
                                       'limit', v_member_limit, 'period_start', v_start_iso,
                                       'resets_at', v_resets_at),
                    'member.limit_reached:' || v_customer || ':' || p_member || ':'
                    || ctx.feature_id || ':' || v_start_iso)
            ON CONFLICT (dedupe_key) DO NOTHING
            RETURNING id
        )
        INSERT INTO webhook_deliveries (event_id, endpoint_id)
        SELECT event.id, e.id FROM event, webhook_endpoints e
        WHERE e.enabled AND 'member.limit_reached' = ANY (e.event_types);
    END IF;
    outcome := 'answered';
END
$fn$;
