-- What Stripe takes back: deleted Stripe customers, refunded and charged-back credit packs.

-- Counts the Stripe customers deleted under this customer. The next Stripe customer is created
-- under an idempotency key that carries it, so Stripe can never replay a deleted one.
ALTER TABLE customers ADD COLUMN stripe_customer_generation integer NOT NULL DEFAULT 0;

-- `charged_back`: the payment was taken back by a dispute the seller lost.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending', 'paid', 'failed', 'refunded', 'charged_back'));

-- Credits of a refunded or charged-back order taken back from the balance, once per order and
-- feature. Only unspent credits can be taken back; `unrecovered` is what had already been spent.
CREATE TABLE credit_clawbacks (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  uuid NOT NULL REFERENCES customers (id),
    feature_id   uuid NOT NULL REFERENCES features (id),
    order_id     uuid NOT NULL REFERENCES orders (id),
    reason       text NOT NULL CHECK (reason IN ('refund', 'dispute')),
    granted      bigint NOT NULL CHECK (granted > 0),
    clawed_back  bigint NOT NULL CHECK (clawed_back >= 0),
    unrecovered  bigint NOT NULL CHECK (unrecovered >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, feature_id),
    CHECK (clawed_back + unrecovered = granted)
);

CREATE INDEX credit_clawbacks_customer ON credit_clawbacks (customer_id, feature_id);

CREATE TRIGGER credit_clawbacks_set_updated_at BEFORE UPDATE ON credit_clawbacks
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
