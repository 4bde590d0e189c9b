-- Shard-ready keys: a distributed PostgreSQL (Citus, tables distributed by customer) enforces a
-- unique key only within one shard, so each customer-scoped table's keys must hold the customer.
-- Here the surrogate primary keys become (customer_id, id); `id` stays as unique as ever (a
-- random uuid), and a plain index on it keeps every lookup by id one index scan. The foreign keys
-- from credits to their order name the customer too, as Citus needs for co-located tables.
--
-- Each ALTER rebuilds one index under an exclusive lock on its table: none of these tables is on
-- the check or track path, and each holds rows per subscription, order or operator action, not
-- per request. The keys still missing the customer, and why, are in tests/db/test_shard_keys.py.

ALTER TABLE credit_grants DROP CONSTRAINT credit_grants_order_id_fkey;
ALTER TABLE credit_clawbacks DROP CONSTRAINT credit_clawbacks_order_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (customer_id, id);
CREATE INDEX orders_id ON orders (id);
ALTER TABLE credit_grants ADD CONSTRAINT credit_grants_order_fkey
    FOREIGN KEY (customer_id, order_id) REFERENCES orders (customer_id, id);
ALTER TABLE credit_clawbacks ADD CONSTRAINT credit_clawbacks_order_fkey
    FOREIGN KEY (customer_id, order_id) REFERENCES orders (customer_id, id);

ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_pkey, ADD PRIMARY KEY (customer_id, id);
CREATE INDEX subscriptions_id ON subscriptions (id);

ALTER TABLE checkout_sessions DROP CONSTRAINT checkout_sessions_pkey,
    ADD PRIMARY KEY (customer_id, id);
CREATE INDEX checkout_sessions_id ON checkout_sessions (id);

ALTER TABLE credit_grants DROP CONSTRAINT credit_grants_pkey, ADD PRIMARY KEY (customer_id, id);
CREATE INDEX credit_grants_id ON credit_grants (id);

ALTER TABLE credit_clawbacks DROP CONSTRAINT credit_clawbacks_pkey,
    ADD PRIMARY KEY (customer_id, id);
CREATE INDEX credit_clawbacks_id ON credit_clawbacks (id);

ALTER TABLE credit_lots DROP CONSTRAINT credit_lots_pkey, ADD PRIMARY KEY (customer_id, id);
CREATE INDEX credit_lots_id ON credit_lots (id);

ALTER TABLE grant_audit DROP CONSTRAINT grant_audit_pkey, ADD PRIMARY KEY (customer_id, id);
CREATE INDEX grant_audit_id ON grant_audit (id);

ALTER TABLE customer_tokens DROP CONSTRAINT customer_tokens_pkey,
    ADD PRIMARY KEY (customer_id, id);
CREATE INDEX customer_tokens_id ON customer_tokens (id);
