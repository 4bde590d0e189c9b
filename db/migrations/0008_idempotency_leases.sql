-- Idempotency-Key reservations belong to the request that made them, for a lease: only that
-- request may store its response or release the key, and a reservation whose request died
-- (its process killed) is taken over by a retry once the lease has ended.

ALTER TABLE idempotent_requests
    ADD COLUMN lease_token uuid,
    ADD COLUMN lease_expires_at timestamptz;

-- Reservations made without a lease (before this release, or by a replica still running it
-- during a rolling deploy) get five minutes from their start. SET DEFAULT after ADD COLUMN
-- leaves existing rows alone, so the table is not rewritten.
ALTER TABLE idempotent_requests
    ALTER COLUMN lease_expires_at SET DEFAULT now() + interval '5 minutes';
UPDATE idempotent_requests SET lease_expires_at = created_at + interval '5 minutes'
WHERE response_status IS NULL;
