-- Customers of the calling apps, their Stripe subscriptions, checkout sessions and one-time orders.

CREATE TABLE customers (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The calling app's own id for its user or account.
    external_id         text NOT NULL UNIQUE CHECK (external_id ~ '^[A-Za-z0-9_.:@-]{1,255}$'),
    email               text,
    name                text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Set once, when the first checkout creates the Stripe customer.
    stripe_customer_id  text UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Stripe's subscriptions as last fetched from Stripe: Stripe is the truth, this is its mirror.
CREATE TABLE subscriptions (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id             uuid NOT NULL REFERENCES customers (id),
    stripe_subscription_id  text NOT NULL UNIQUE,
    status                  text NOT NULL CHECK (status IN (
                                'incomplete', 'incomplete_expired', 'trialing', 'active',
                                'past_due', 'canceled', 'unpaid', 'paused')),
    stripe_price_id         text NOT NULL,
    price_id                uuid REFERENCES prices (id),
    stripe_item_id          text,
    quantity                integer NOT NULL DEFAULT 1,
    current_period_start    timestamptz,
    current_period_end      timestamptz,
    cancel_at_period_end    boolean NOT NULL DEFAULT false,
    cancel_at               timestamptz,
    canceled_at             timestamptz,
    ended_at                timestamptz,
    trial_end               timestamptz,
    stripe_schedule_id      text,
    -- A downgrade scheduled for the end of the period (ours, through a subscription schedule).
    scheduled_price_id      uuid REFERENCES prices (id),
    -- When the subscription became past_due; drives the grace period.
    past_due_since          timestamptz,
    stripe_created_at       timestamptz NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX subscriptions_customer ON subscriptions (customer_id, stripe_created_at DESC);

CREATE TABLE checkout_sessions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id        uuid NOT NULL REFERENCES customers (id),
    price_id           uuid NOT NULL REFERENCES prices (id),
    stripe_session_id  text NOT NULL UNIQUE,
    mode               text NOT NULL CHECK (mode IN ('subscription', 'payment')),
    status             text NOT NULL CHECK (status IN ('open', 'complete', 'expired')),
    url                text,
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX checkout_sessions_customer ON checkout_sessions (customer_id);

-- Idempotency-Key of POST requests: the first request's body hash and its response.
CREATE TABLE idempotent_requests (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    api_key_id       uuid NOT NULL REFERENCES api_keys (id),
    operation        text NOT NULL,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    response_status  integer,
    response_body    jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (api_key_id, operation, idempotency_key)
);

-- One-time purchases, recorded from completed payment-mode checkouts.
CREATE TABLE orders (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id               uuid NOT NULL REFERENCES customers (id),
    stripe_checkout_session_id text NOT NULL UNIQUE,
    stripe_payment_intent_id  text,
    status                    text NOT NULL CHECK (status IN ('pending', 'paid', 'failed', 'refunded')),
    currency                  text NOT NULL,
    amount_total              bigint NOT NULL,
    customer_email            text,
    line_items                jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX orders_customer ON orders (customer_id, created_at DESC);

CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER subscriptions_set_updated_at BEFORE UPDATE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER checkout_sessions_set_updated_at BEFORE UPDATE ON checkout_sessions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER idempotent_requests_set_updated_at BEFORE UPDATE ON idempotent_requests
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER orders_set_updated_at BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
