-- Usage metering: per-period counters, purchased credit balances, the idempotent usage ledger,
-- and short-lived customer tokens for front ends.

-- One row per customer, feature and period; a new period starts a new row (lazy rollover).
CREATE TABLE usage_counters (
    customer_id   uuid NOT NULL REFERENCES customers (id),
    feature_id    uuid NOT NULL REFERENCES features (id),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz,
    used          bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    cost          numeric(30, 12) NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, feature_id, period_start)
);

-- Credits bought with one-time prices, and how many have been spent; they never expire.
CREATE TABLE credit_balances (
    customer_id  uuid NOT NULL REFERENCES customers (id),
    feature_id   uuid NOT NULL REFERENCES features (id),
    granted      bigint NOT NULL DEFAULT 0 CHECK (granted >= 0),
    spent        bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, feature_id),
    CHECK (spent <= granted)
);

INSERT INTO credit_balances (customer_id, feature_id, granted)
SELECT customer_id, feature_id, sum(amount) FROM credit_grants GROUP BY customer_id, feature_id;

-- Every track call, keyed by the caller's idempotency key: replays return `response`.
CREATE TABLE usage_events (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL REFERENCES customers (id),
    feature_id       uuid NOT NULL REFERENCES features (id),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    amount           bigint NOT NULL,
    cost             numeric(30, 12),
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded         boolean NOT NULL DEFAULT false,
    period_start     timestamptz,
    response         json,  -- json, not jsonb: replays keep the key order byte for byte
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, idempotency_key)
);

CREATE INDEX usage_events_customer_feature ON usage_events (customer_id, feature_id, created_at);

CREATE TABLE customer_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  uuid NOT NULL REFERENCES customers (id),
    token_hash   bytea NOT NULL UNIQUE,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER usage_counters_set_updated_at BEFORE UPDATE ON usage_counters
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER credit_balances_set_updated_at BEFORE UPDATE ON credit_balances
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER usage_events_set_updated_at BEFORE UPDATE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER customer_tokens_set_updated_at BEFORE UPDATE ON customer_tokens
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
