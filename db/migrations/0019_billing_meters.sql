-- Metered billing: units past a plan's allowance are billed through Stripe Billing Meters.
--
-- A plan feature with overage 'bill' carries its per-unit price (minor units, decimals allowed);
-- each billed feature has one Stripe meter (billing_meters), and each plan has one metered
-- Stripe price per billed feature and per recurring interval it sells (metered_prices), so a
-- monthly and a yearly subscription can both carry it. Both follow the catalog's sync
-- bookkeeping (0002): pending work is sync_generation > synced_generation.
--
-- meter_events is the outbox of billable units: usage_track (0020) writes a row in the track's
-- own statement, and the worker delivers it to Stripe under its `identifier`, which Stripe keeps
-- unique, so a retry or a replay is never billed twice.

ALTER TABLE plan_features DROP CONSTRAINT plan_features_overage_check;
ALTER TABLE plan_features
    ADD CONSTRAINT plan_features_overage_check CHECK (overage IN ('deny', 'allow', 'bill')),
    ADD COLUMN overage_unit_amount numeric CHECK (overage_unit_amount > 0),
    ADD COLUMN overage_currency text CHECK (overage_currency ~ '^[a-z]{3}$'),
    ADD CONSTRAINT plan_features_overage_price CHECK (
        (overage = 'bill') = (overage_unit_amount IS NOT NULL AND overage_currency IS NOT NULL));

CREATE TABLE billing_meters (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    feature_id         uuid NOT NULL UNIQUE REFERENCES features (id),
    event_name         text NOT NULL UNIQUE,
    stripe_meter_id    text UNIQUE,
    sync_generation    bigint NOT NULL DEFAULT 1,
    synced_generation  bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE metered_prices (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    plan_id            uuid NOT NULL REFERENCES plans (id),
    feature_id         uuid NOT NULL REFERENCES features (id),
    lookup_key         text NOT NULL,
    unit_amount        numeric NOT NULL CHECK (unit_amount > 0),
    currency           text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    recurring_interval text NOT NULL CHECK (recurring_interval IN ('month', 'year')),
    stripe_price_id    text UNIQUE,
    active             boolean NOT NULL DEFAULT true,
    sync_generation    bigint NOT NULL DEFAULT 1,
    synced_generation  bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX metered_prices_active_lookup_key ON metered_prices (lookup_key) WHERE active;
CREATE INDEX metered_prices_plan ON metered_prices (plan_id) WHERE active;

ALTER TABLE catalog_drift DROP CONSTRAINT catalog_drift_object_type_check;
ALTER TABLE catalog_drift ADD CONSTRAINT catalog_drift_object_type_check
    CHECK (object_type IN ('product', 'price', 'billing.meter'));

CREATE TABLE meter_events (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL REFERENCES customers (id),
    feature_id       uuid NOT NULL REFERENCES features (id),
    event_name       text NOT NULL,
    identifier       text NOT NULL UNIQUE CHECK (length(identifier) <= 100),
    value            bigint NOT NULL CHECK (value > 0),
    occurred_at      timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'rejected')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Part of the idempotency key: a replay after a rejection is a new request to Stripe.
    replays          integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX meter_events_due ON meter_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX meter_events_rejected ON meter_events (created_at, id) WHERE status = 'rejected';

CREATE TRIGGER billing_meters_set_updated_at BEFORE UPDATE ON billing_meters
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER metered_prices_set_updated_at BEFORE UPDATE ON metered_prices
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER meter_events_set_updated_at BEFORE UPDATE ON meter_events
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
