"""The access policy: which plan a customer is entitled to, given their subscriptions.

`active` and `trialing` grant the subscribed plan (a pending cancellation, at the period end or
at a date, keeps it until Stripe ends the subscription); `past_due` keeps it for a grace period;
anything else (`paused` included) falls back to the default plan. A subscription grants a plan
only through an item whose price is in the catalog.

Over several subscriptions, the best plan granted now wins: the one with the highest
`display_order` (plans are listed from the smallest to the largest). Its allowances apply as
they are; allowances of two plans never add up. The same policy runs in SQL
(`db.subscriptions.grants_sql`), which picks the subscription; this module decides on it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from billing_service.db.subscriptions import Subscription

GRANTING_STATUSES = frozenset({"active", "trialing"})


def grants_plan(subscription: Subscription | None, *, now: datetime, grace: timedelta) -> bool:
    """Whether the subscription's plan applies now."""
    if subscription is None:
        return False
    return grants_plan_status(
        subscription.status, subscription.plan_id, subscription.past_due_since, now=now, grace=grace
    )


def grants_plan_status(
    status: str | None,
    plan_id: uuid.UUID | None,
    past_due_since: datetime | None,
    *,
    now: datetime,
    grace: timedelta,
) -> bool:
    """The policy on a subscription's bare facts (the hot path reads them without the row)."""
    if status is None or plan_id is None:
        return False
    if status in GRANTING_STATUSES:
        return True
    if status == "past_due":
        return now < (past_due_since or now) + grace
    return False
