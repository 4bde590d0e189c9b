"""The access policy: which plan a customer is entitled to, given their subscription.

`active` and `trialing` grant the subscribed plan (a pending cancellation keeps it until Stripe
ends the subscription at period end); `past_due` keeps it for a grace period; anything else falls
back to the default plan.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from billing_service.db.subscriptions import Subscription

GRANTING_STATUSES = frozenset({"active", "trialing"})


def grants_plan(subscription: Subscription | None, *, now: datetime, grace: timedelta) -> bool:
    """Whether the subscription's plan applies now."""
    if subscription is None or subscription.plan_id is None:
        return False
    if subscription.status in GRANTING_STATUSES:
        return True
    if subscription.status == "past_due":
        since = subscription.past_due_since or now
        return now < since + grace
    return False
