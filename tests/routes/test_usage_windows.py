"""Which counter a call counts in: check, entitlements and track read the current window's
counter alike, across a change of reset and across a renewal the mirror has not seen yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.catalog_spec import CatalogSpec, MeteredLimit, Reset
from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import Clock, check, track
from tests.routes.tiers import allowance, mirrored, price_id, tiered
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


def with_allowance(
    spec: CatalogSpec, plan_key: str, feature: str, allowance: MeteredLimit
) -> CatalogSpec:
    plan = spec.plans[plan_key]
    changed = plan.model_copy(update={"features": plan.features | {feature: allowance}})
    return spec.model_copy(update={"plans": spec.plans | {plan_key: changed}})


async def pro_ai_calls(pool: asyncpg.Pool, reset: Reset) -> None:
    """The example catalog with Pro's AI calls limited to 5 per `reset` window."""
    await apply(
        pool, None, with_allowance(example(), "pro", "ai_calls", MeteredLimit(limit=5, reset=reset))
    )


async def agree(
    client: httpx.AsyncClient, key: str, *, amount: int, used: int, allowed: bool
) -> dict[str, Any]:
    """check, entitlements and then track of `amount` all report `used` units so far and the
    same decision; returns what track answered."""
    checked = (await check(client, key, amount=amount)).json()
    assert (checked["used"], checked["allowed"]) == (used, allowed), checked
    listed = await client.get("/v1/customers/user_1/entitlements", headers=bearer(key))
    feature = next(f for f in listed.json()["features"] if f["feature"] == "ai_calls")
    assert feature["used"] == used, feature
    assert feature["resets_at"] == checked["resets_at"]
    tracked: dict[str, Any] = (await track(client, key, amount=amount)).json()
    assert tracked["allowed"] is allowed, tracked
    assert tracked["used"] == (used + amount if allowed else used), tracked
    assert tracked["resets_at"] == checked["resets_at"]
    return tracked


async def test_check_entitlements_and_track_agree_when_the_reset_window_changes(
    settings: Settings, pool: asyncpg.Pool, usage_key: str
) -> None:
    """A Pro subscriber billed from the 5th uses 5 of 5 calls in the billing period; Pro's limit
    then moves to calendar months (a new, empty window from the 1st) and back. After each move,
    check, entitlements and track read the same counter, the current window's."""
    await pro_ai_calls(pool, "billing_period")
    await pool.execute(
        """
        WITH c AS (INSERT INTO customers (external_id) VALUES ('user_1') RETURNING id)
        INSERT INTO subscriptions (customer_id, stripe_subscription_id, status, stripe_price_id,
                                   price_id, current_period_start, current_period_end,
                                   stripe_created_at)
        SELECT c.id, 'sub_x', 'active', 'price_x', p.id, '2027-03-05 09:00Z', '2027-04-05 09:00Z',
               now()
        FROM c, prices p WHERE p.lookup_key = 'pro_monthly'
        """
    )
    clock = Clock(datetime(2027, 3, 10, 12, 0, tzinfo=UTC))
    async with app_client(settings, clock=clock) as client:
        done = await agree(client, usage_key, amount=5, used=0, allowed=True)
        assert done["resets_at"] == "2027-04-05T09:00:00+00:00"
        await agree(client, usage_key, amount=1, used=5, allowed=False)

        await pro_ai_calls(pool, "month")
        moved = await agree(client, usage_key, amount=3, used=0, allowed=True)
        assert moved["resets_at"] == "2027-04-01T00:00:00+00:00"
        await agree(client, usage_key, amount=3, used=3, allowed=False)
        await agree(client, usage_key, amount=2, used=3, allowed=True)

        await pro_ai_calls(pool, "billing_period")
        await agree(client, usage_key, amount=1, used=5, allowed=False)

    counters = await pool.fetch(
        "SELECT period_start, used FROM usage_counters ORDER BY period_start"
    )
    assert [(r["period_start"].day, r["used"]) for r in counters] == [(1, 5), (5, 5)]


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


async def test_usage_during_a_late_renewal_counts_in_the_new_period(
    stripe_client: httpx.AsyncClient,
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Pro billed on the 31st: its period ends Feb 28 10:00 and Stripe renews it to Mar 31, but
    the renewal webhook lands an hour late. Seats used in that hour count in the new period's
    counter, resets_at is Mar 31 (the anchor day, no longer clamped), and once the webhook
    lands the same counter goes on: no reset, nothing counted twice."""
    stripe_customer = await tiered(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(
        stripe_customer, await price_id(pool, "pro_monthly")
    )
    item = subscription["items"]["data"][0]
    jan31, feb28, mar31 = (
        datetime(2027, m, d, 10, tzinfo=UTC) for m, d in ((1, 31), (2, 28), (3, 31))
    )
    item.update(current_period_start=_epoch(jan31), current_period_end=_epoch(feb28))
    await mirrored(stripe_client, pool, gateway, subscription)

    clock = Clock(feb28 - timedelta(hours=1))
    async with app_client(stripe_settings, clock=clock) as client:
        before = (await track(client, billing_key, feature="seats", amount=2)).json()
        assert (before["used"], before["resets_at"]) == (2, feb28.isoformat())

        clock.now = feb28 + timedelta(hours=1)  # renewed at Stripe, not yet in the mirror
        gap = (await track(client, billing_key, feature="seats", amount=3)).json()
        assert (gap["allowed"], gap["used"], gap["resets_at"]) == (True, 3, mar31.isoformat())
        checked = (await check(client, billing_key, feature="seats", amount=7)).json()
        assert (checked["allowed"], checked["used"]) == (True, 3)
        seats = await allowance(client, billing_key, "seats")
        assert (seats["used"], seats["resets_at"]) == (3, mar31.isoformat())

        item.update(current_period_start=_epoch(feb28), current_period_end=_epoch(mar31))
        await mirrored(stripe_client, pool, gateway, subscription)  # the late webhook lands
        after = (await track(client, billing_key, feature="seats", amount=1)).json()
        assert (after["used"], after["resets_at"]) == (4, mar31.isoformat())
        assert (await check(client, billing_key, feature="seats", amount=7)).json()[
            "allowed"
        ] is False

    counters = await pool.fetch(
        "SELECT uc.period_start, uc.period_end, uc.used FROM usage_counters uc "
        "JOIN features f ON f.id = uc.feature_id WHERE f.key = 'seats' ORDER BY period_start"
    )
    assert [tuple(r.values()) for r in counters] == [(jan31, feb28, 2), (feb28, mar31, 4)]
    mirror = await pool.fetchrow(
        "SELECT current_period_start, current_period_end FROM subscriptions"
    )
    assert mirror is not None
    assert tuple(mirror.values()) == (feb28, mar31)
