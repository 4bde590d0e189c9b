-- Every item of a subscription, its currency, and when a scheduled change takes effect.
--
-- A Stripe subscription may carry several items (a plan price, a metered price, an add-on).
-- `items` mirrors all of them as Stripe lists them:
--   [{"id": "si_…", "price": "price_…", "quantity": 1 | null, "metered": false,
--     "current_period_start": <epoch>, "current_period_end": <epoch>}, …]
-- The plan item (the item whose price names a plan of the catalog) stays in the columns
-- stripe_price_id, price_id, stripe_item_id, quantity and current_period_*.

ALTER TABLE subscriptions
    ADD COLUMN items jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(items) = 'array'),
    ADD COLUMN currency text CHECK (currency ~ '^[a-z]{3}$'),
    ADD COLUMN scheduled_change_at timestamptz;

UPDATE subscriptions s
SET items = jsonb_build_array(jsonb_build_object(
        'id', s.stripe_item_id,
        'price', s.stripe_price_id,
        'quantity', s.quantity,
        'metered', false,
        'current_period_start', extract(epoch FROM s.current_period_start)::bigint,
        'current_period_end', extract(epoch FROM s.current_period_end)::bigint)),
    currency = (SELECT p.currency FROM prices p WHERE p.id = s.price_id),
    scheduled_change_at = CASE WHEN s.scheduled_price_id IS NOT NULL
                               THEN s.current_period_end END
WHERE s.stripe_item_id IS NOT NULL;
