-- Email notifications, delivered from the outbox like outgoing webhooks.
CREATE TABLE email_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id         uuid NOT NULL REFERENCES outbox_events (id),
    template         text NOT NULL,
    -- NULL sends to the owner address configured in BILLING_OWNER_EMAIL.
    to_address       text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, template)
);

CREATE INDEX email_deliveries_due ON email_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TRIGGER email_deliveries_set_updated_at BEFORE UPDATE ON email_deliveries
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
