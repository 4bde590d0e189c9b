-- The plan catalog: features, plans, prices, per-plan limits and credit grants.
-- Rows are archived (active = false), never deleted: subscriptions and orders keep pointing at them.
--
-- Stripe sync bookkeeping: a change that Stripe must learn about bumps `sync_generation`;
-- the sync pushes it and records `synced_generation`. Pending work is generation > synced.

CREATE TABLE features (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key         text NOT NULL UNIQUE CHECK (key ~ '^[a-z][a-z0-9_]{0,62}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('boolean', 'metered')),
    unit        text CHECK (unit IS NULL OR length(unit) BETWEEN 1 AND 50),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plans (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key                text NOT NULL UNIQUE CHECK (key ~ '^[a-z][a-z0-9_]{0,62}$'),
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description        text NOT NULL DEFAULT '',
    is_default         boolean NOT NULL DEFAULT false,
    active             boolean NOT NULL DEFAULT true,
    trial_days         integer NOT NULL DEFAULT 0 CHECK (trial_days BETWEEN 0 AND 730),
    display_order      integer NOT NULL DEFAULT 0,
    stripe_product_id  text UNIQUE,
    sync_generation    bigint NOT NULL DEFAULT 1,
    synced_generation  bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (active OR NOT is_default)
);

-- At most one default plan, checked at once...
CREATE UNIQUE INDEX plans_single_default ON plans (is_default) WHERE is_default;

-- ...and at least one whenever any plan exists, checked at commit so a transaction may move it.
CREATE FUNCTION check_exactly_one_default_plan() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM plans)
       AND (SELECT count(*) FROM plans WHERE is_default) <> 1 THEN
        RAISE EXCEPTION 'exactly one plan must be the default plan'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'plans_exactly_one_default';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER plans_exactly_one_default
    AFTER INSERT OR UPDATE OF is_default OR DELETE ON plans
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_exactly_one_default_plan();

CREATE TABLE prices (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    plan_id            uuid NOT NULL REFERENCES plans (id),
    lookup_key         text NOT NULL CHECK (lookup_key ~ '^[a-z][a-z0-9_]{0,62}$'),
    amount             bigint NOT NULL CHECK (amount >= 0),
    currency           text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    type               text NOT NULL CHECK (type IN ('recurring', 'one_time')),
    recurring_interval text CHECK (recurring_interval IN ('month', 'year')),
    stripe_price_id    text UNIQUE,
    active             boolean NOT NULL DEFAULT true,
    sync_generation    bigint NOT NULL DEFAULT 1,
    synced_generation  bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((type = 'recurring') = (recurring_interval IS NOT NULL))
);

-- A lookup key names one live price; archived prices keep theirs for history.
CREATE UNIQUE INDEX prices_active_lookup_key ON prices (lookup_key) WHERE active;
CREATE INDEX prices_plan ON prices (plan_id);

CREATE TABLE plan_features (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    plan_id     uuid NOT NULL REFERENCES plans (id),
    feature_id  uuid NOT NULL REFERENCES features (id),
    enabled     boolean NOT NULL DEFAULT true,
    "limit"     bigint CHECK ("limit" >= 0),
    soft_limit  bigint CHECK (soft_limit >= 0),
    reset       text CHECK (reset IN ('hour', 'day', 'week', 'month', 'year', 'billing_period', 'never')),
    overage     text NOT NULL DEFAULT 'deny' CHECK (overage IN ('deny', 'allow')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (plan_id, feature_id),
    CHECK (soft_limit IS NULL OR "limit" IS NULL OR soft_limit <= "limit")
);

-- Units of a metered feature a one-time price adds to the buyer's balance (credit packs).
CREATE TABLE price_grants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    price_id    uuid NOT NULL REFERENCES prices (id),
    feature_id  uuid NOT NULL REFERENCES features (id),
    amount      bigint NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (price_id, feature_id)
);

-- Changes made to our products and prices outside the catalog (the Stripe dashboard).
CREATE TABLE catalog_drift (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    stripe_object_id text NOT NULL,
    object_type      text NOT NULL CHECK (object_type IN ('product', 'price')),
    event_type       text NOT NULL,
    description      text NOT NULL,
    resolved_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX catalog_drift_open ON catalog_drift (stripe_object_id, description)
    WHERE resolved_at IS NULL;

CREATE TRIGGER features_set_updated_at BEFORE UPDATE ON features
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER plans_set_updated_at BEFORE UPDATE ON plans
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER prices_set_updated_at BEFORE UPDATE ON prices
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER plan_features_set_updated_at BEFORE UPDATE ON plan_features
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER price_grants_set_updated_at BEFORE UPDATE ON price_grants
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER catalog_drift_set_updated_at BEFORE UPDATE ON catalog_drift
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
