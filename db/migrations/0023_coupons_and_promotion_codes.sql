-- Discounts created through the service and synced to Stripe (routes/discounts.py).
-- A coupon's `key` is also its Stripe coupon id, so a retried create can never make two; a
-- row is written first (intent), Stripe is called outside any transaction, and the Stripe id
-- is recorded after: a row without one has not reached Stripe yet, and the same POST again
-- finishes it. Promotion codes are what customers type; Checkout resolves them here.

CREATE TABLE coupons (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key                 text NOT NULL UNIQUE CHECK (key ~ '^[A-Za-z0-9_-]{1,63}$'),
    name                text,
    percent_off         numeric(5, 2) CHECK (percent_off > 0 AND percent_off <= 100),
    amount_off          bigint CHECK (amount_off > 0),
    currency            text CHECK (currency ~ '^[a-z]{3}$'),
    duration            text NOT NULL CHECK (duration IN ('once', 'repeating', 'forever')),
    duration_in_months  integer CHECK (duration_in_months > 0),
    stripe_coupon_id    text UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((percent_off IS NULL) <> (amount_off IS NULL)),
    CHECK ((amount_off IS NULL) = (currency IS NULL)),
    CHECK ((duration = 'repeating') = (duration_in_months IS NOT NULL))
);

CREATE TABLE promotion_codes (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code                      text NOT NULL CHECK (code ~ '^[A-Za-z0-9-]{1,200}$'),
    coupon_id                 uuid NOT NULL REFERENCES coupons (id),
    max_redemptions           integer CHECK (max_redemptions > 0),
    expires_at                timestamptz,
    stripe_promotion_code_id  text UNIQUE,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

-- Stripe treats codes regardless of case; so do we.
CREATE UNIQUE INDEX promotion_codes_code ON promotion_codes (lower(code));
CREATE INDEX promotion_codes_coupon ON promotion_codes (coupon_id);

CREATE TRIGGER coupons_set_updated_at BEFORE UPDATE ON coupons
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER promotion_codes_set_updated_at BEFORE UPDATE ON promotion_codes
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
