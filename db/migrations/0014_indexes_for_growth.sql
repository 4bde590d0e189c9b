-- Indexes that keep pruning and the list routes index range scans as the tables grow, and one
-- fewer index for every usage track to maintain. docs/query-plans.md shows the plans.
--
-- On a large table, CREATE INDEX holds off writes to it while it builds (about a second per
-- million rows). To avoid that, build them beforehand with CREATE INDEX CONCURRENTLY and the
-- same names and definitions: the statements below then find them and do nothing.

-- No query reads usage_events by customer, feature and time (the usage history sums
-- usage_counters); every track paid to maintain it.
DROP INDEX IF EXISTS usage_events_customer_feature;

-- The daily prune finds what outlived the retention by age, oldest first, a batch at a time
-- (processed Stripe events through stripe_events_status, webhook deliveries through
-- webhook_deliveries_endpoint). Btrees, not BRIN: pruning frees the oldest pages and new rows
-- fill them, so a BRIN range soon spans old and new rows and stops narrowing the scan
-- (docs/query-plans.md shows it).
CREATE INDEX IF NOT EXISTS usage_events_created ON usage_events (created_at);
CREATE INDEX IF NOT EXISTS outbox_events_created ON outbox_events (created_at);
CREATE INDEX IF NOT EXISTS email_deliveries_created ON email_deliveries (created_at);
CREATE INDEX IF NOT EXISTS idempotent_requests_created ON idempotent_requests (created_at);

-- Keys and endpoints are listed oldest first, a page at a time, and never deleted.
CREATE INDEX IF NOT EXISTS api_keys_created ON api_keys (created_at, id);
CREATE INDEX IF NOT EXISTS webhook_endpoints_created ON webhook_endpoints (created_at, id);
