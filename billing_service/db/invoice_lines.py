"""SQL that names the prices on an invoice's lines: their lookup key, and whether metered."""

from __future__ import annotations

import uuid

from billing_service.db.pool import Executor


async def select_line_prices(
    conn: Executor, subscription_id: uuid.UUID, stripe_price_ids: list[str]
) -> dict[str, tuple[str | None, bool]]:
    """Each Stripe price's lookup key in our catalog (None outside it) and whether it is
    metered: a metered price of the catalog, or the subscription's item says so (the mirror)."""
    rows = await conn.fetch(
        """
        SELECT p.stripe_price_id, coalesce(pr.lookup_key, mp.lookup_key) AS lookup_key,
               mp.id IS NOT NULL OR coalesce(
                   (SELECT bool_or((e.item ->> 'metered')::boolean)
                    FROM subscriptions s, jsonb_array_elements(s.items) AS e(item)
                    WHERE s.id = $1 AND e.item ->> 'price' = p.stripe_price_id),
                   false) AS metered
        FROM unnest($2::text[]) AS p(stripe_price_id)
        LEFT JOIN prices pr ON pr.stripe_price_id = p.stripe_price_id
        LEFT JOIN metered_prices mp ON mp.stripe_price_id = p.stripe_price_id
        """,
        subscription_id,
        stripe_price_ids,
    )
    return {row["stripe_price_id"]: (row["lookup_key"], row["metered"]) for row in rows}
