-- Indexes for the operator's lists: customers newest first and searched by the prefix of their
-- external id or (case-insensitively) of their email, and the webhook ledger filtered by event
-- type or by the Stripe customer an event is about. On a large table, build them beforehand
-- with CREATE INDEX CONCURRENTLY and the same names (see 0014): IF NOT EXISTS then skips them.

CREATE INDEX IF NOT EXISTS customers_created ON customers (created_at, id);
CREATE INDEX IF NOT EXISTS customers_external_id_prefix ON customers (external_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS customers_email_prefix ON customers (lower(email) text_pattern_ops);

CREATE INDEX IF NOT EXISTS stripe_events_type ON stripe_events (type, created_at);
-- The Stripe customer an event is about: its object's `customer`, or the object itself when it
-- is a customer. Keep in step with EVENT_CUSTOMER in billing_service/db/stripe_events.py.
CREATE INDEX IF NOT EXISTS stripe_events_customer ON stripe_events ((coalesce(
    payload #>> '{data,object,customer}',
    CASE WHEN payload #>> '{data,object,object}' = 'customer' THEN object_id END
)), created_at);
