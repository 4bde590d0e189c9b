-- Invoices and charges. invoice_pages: pages of a customer's invoice list as Stripe last answered
-- them (`GET /v1/customers/{id}/invoices`).
-- Shared by every replica: a page fetched by one is fresh for all for a short while, and any of
-- them can answer from it while Stripe is unavailable. Only what the route shows is kept (no
-- email, name or address of the customer). Keyed by the Stripe customer too, so a Stripe
-- customer deleted and replaced never shows the old one's invoices.
CREATE TABLE IF NOT EXISTS invoice_pages (
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    stripe_customer_id text NOT NULL,
    starting_after text NOT NULL,  -- '' for the first page
    page_size integer NOT NULL,
    invoices jsonb NOT NULL,
    has_more boolean NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, stripe_customer_id, starting_after, page_size)
);
CREATE OR REPLACE TRIGGER invoice_pages_set_updated_at BEFORE UPDATE ON invoice_pages
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- What a customer will be charged this period (entitlements' `overage_billing`): the billable
-- units of a feature since its window started, summed from the index alone.
CREATE INDEX IF NOT EXISTS meter_events_customer_feature
    ON meter_events (customer_id, feature_id, occurred_at) INCLUDE (value);
