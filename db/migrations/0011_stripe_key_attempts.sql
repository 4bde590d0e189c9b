-- Idempotency keys that Stripe answered with a failure, and which attempt comes next.
--
-- Stripe keeps the first answer to an idempotency key for at least 24 hours, failures included
-- (a declined card, a refusal, a 500 once the request started to run), and replays it to every
-- request with that key. A row here says the key `base_key` has been answered that way: the
-- next attempt sends `<base_key>:retry:<attempt>` instead. Keys without a row are sent as they
-- are, so a call that got no answer (a timeout) is repeated under the same key.
CREATE TABLE stripe_key_attempts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    base_key    text NOT NULL UNIQUE CHECK (length(base_key) BETWEEN 1 AND 255),
    attempt     integer NOT NULL CHECK (attempt > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER stripe_key_attempts_set_updated_at BEFORE UPDATE ON stripe_key_attempts
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
