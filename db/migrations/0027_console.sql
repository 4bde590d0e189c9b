-- The operator console's customer page lists the outgoing notifications about one customer,
-- newest first: the outbox events whose payload names them. On a large table, build it
-- beforehand with CREATE INDEX CONCURRENTLY and the same name (see 0014): IF NOT EXISTS then
-- skips it.

CREATE INDEX IF NOT EXISTS outbox_events_customer
    ON outbox_events ((payload ->> 'customer_id'), created_at DESC, id DESC);
