-- The Stripe webhook ledger, credit grants from orders, and the log of scheduled job runs.

-- Every signed Stripe event we accepted, stored once. Processing state lives beside it:
-- pending events are claimed with a lease (next_attempt_at) and marked processed in the same
-- transaction as their effect.
CREATE TABLE stripe_events (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    stripe_event_id    text NOT NULL UNIQUE,
    type               text NOT NULL,
    livemode           boolean NOT NULL,
    api_version        text,
    stripe_created_at  timestamptz NOT NULL,
    object_id          text,
    payload            jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'processed', 'failed')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    processed_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stripe_events_due ON stripe_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX stripe_events_status ON stripe_events (status, created_at);

-- When the customer's subscriptions were last fetched from Stripe (the fetch's start time):
-- an event received before then is already reflected, so its twin does no second fetch.
ALTER TABLE customers ADD COLUMN subscriptions_fetched_at timestamptz;

ALTER TABLE checkout_sessions ADD COLUMN quantity integer NOT NULL DEFAULT 1;

CREATE INDEX orders_payment_intent ON orders (stripe_payment_intent_id);

-- Units of metered features added to a customer's balance (credit packs), each once per order.
CREATE TABLE credit_grants (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  uuid NOT NULL REFERENCES customers (id),
    feature_id   uuid NOT NULL REFERENCES features (id),
    order_id     uuid NOT NULL REFERENCES orders (id),
    amount       bigint NOT NULL CHECK (amount > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, feature_id)
);

CREATE INDEX credit_grants_customer ON credit_grants (customer_id, feature_id);

CREATE TABLE job_runs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job          text NOT NULL,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
    errors       jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX job_runs_job ON job_runs (job, started_at DESC);

CREATE TRIGGER stripe_events_set_updated_at BEFORE UPDATE ON stripe_events
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER credit_grants_set_updated_at BEFORE UPDATE ON credit_grants
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER job_runs_set_updated_at BEFORE UPDATE ON job_runs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
