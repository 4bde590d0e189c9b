"""The revenue report against a fixture whose figures were worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer

NOW = datetime(2027, 3, 10, 12, tzinfo=UTC)  # a Wednesday of ISO week 2027-W10


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


PRICES = [  # lookup key, amount, currency, interval
    ("pro_monthly", 2000, "usd", "month"),
    ("pro_yearly", 24000, "usd", "year"),
    ("pro_monthly_eur", 1800, "eur", "month"),
    ("pro_yearly_eur", 18000, "eur", "year"),
]
SUBSCRIPTIONS = [  # customer, status, price, quantity, started, ended, trial end
    ("a", "active", "pro_monthly", 1, "2027-03-09", None, None),
    ("b", "active", "pro_yearly", 2, "2026-01-05", None, None),
    ("c", "trialing", "pro_monthly", 1, "2027-03-01", None, "2027-03-15"),
    ("d", "past_due", "pro_monthly_eur", 1, "2027-02-01", None, None),
    ("e", "canceled", "pro_yearly_eur", 1, "2026-06-01", "2027-02-17", None),
    ("f", "canceled", "pro_monthly", 1, "2027-02-02", "2027-02-10", "2027-02-16"),
    ("g", "active", "pro_yearly_eur", 1, "2027-01-04", None, None),
    ("h", "incomplete", "pro_monthly", 1, "2027-03-09", None, None),
]
ORDERS = [  # status, currency, amount, created
    ("paid", "usd", 5000, "2027-03-02"),
    ("paid", "eur", 1200, "2027-02-18"),
    ("refunded", "usd", 999, "2027-03-03"),
    ("paid", "usd", 700, "2026-10-01"),
]


async def seed(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO plans (key, name, is_default) VALUES ('free', 'Free', true), "
            "('pro', 'Pro', false)"
        )
        for key, amount, currency, interval in PRICES:
            await conn.execute(
                "INSERT INTO prices (plan_id, lookup_key, amount, currency, type, "
                "recurring_interval) SELECT id, $1, $2, $3, 'recurring', $4 FROM plans "
                "WHERE key = 'pro'",
                key, amount, currency, interval,
            )  # fmt: skip
        for customer, status, price, quantity, started, ended, trial_end in SUBSCRIPTIONS:
            await conn.execute(
                """
                WITH c AS (INSERT INTO customers (external_id) VALUES ($1) RETURNING id)
                INSERT INTO subscriptions (customer_id, stripe_subscription_id, status,
                    stripe_price_id, price_id, quantity, stripe_created_at, canceled_at, ended_at,
                    trial_end)
                SELECT c.id, 'sub_' || $1, $2, 'price_' || $3, p.id, $4, $5, $6, $6, $7
                FROM c, prices p WHERE p.lookup_key = $3
                """,
                customer, status, price, quantity, at(started),
                ended and at(ended), trial_end and at(trial_end),
            )  # fmt: skip
        for n, (status, currency, amount, created) in enumerate(ORDERS):
            await conn.execute(
                "INSERT INTO orders (customer_id, stripe_checkout_session_id, status, currency, "
                "amount_total, created_at) SELECT id, $1, $2, $3, $4, $5 FROM customers "
                "WHERE external_id = 'a'",
                f"cs_{n}", status, currency, amount, at(created),
            )  # fmt: skip


def week(
    name: str, start: str, new: int = 0, churned: int = 0, **revenue: dict[str, int]
) -> dict[str, object]:
    return {
        "week": name,
        "start": f"{start}T00:00:00+00:00",
        "new_subscriptions": new,
        "churned_subscriptions": churned,
        "revenue": revenue,
    }


def money(one_time: int = 0, new_mrr: int = 0, churned_mrr: int = 0) -> dict[str, int]:
    return {
        "one_time": one_time,
        "new_mrr": new_mrr,
        "churned_mrr": churned_mrr,
        "net": one_time + new_mrr - churned_mrr,
    }


async def test_revenue_report_matches_the_hand_computed_fixture(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """MRR and ARR count active and past-due subscriptions (a yearly price as 1/12 a month, times
    quantity), per currency; trials, canceled and incomplete ones do not. The 12 ISO weeks count
    started and ended subscriptions, and net revenue is paid orders + new MRR - churned MRR, where
    a trial canceled before it ended brings and takes no MRR and a refunded order is no revenue."""
    await seed(pool)
    key = await issue_key(pool, Scope.ADMIN)
    async with app_client(settings, clock=lambda: NOW) as client:
        response = await client.get("/v1/reports/revenue", headers=bearer(key))
    assert response.status_code == 200, response.text
    report = response.json()
    # usd: 2000 x 12 + 24000 x 2 = 72000 a year; eur: 1800 x 12 + 18000 = 39600 a year.
    assert report["currencies"] == {
        "eur": {"mrr": 3300, "arr": 39600, "one_time_revenue": 1200},
        "usd": {"mrr": 6000, "arr": 72000, "one_time_revenue": 5700},
    }
    assert report["subscriptions"] == {"active": 3, "trialing": 1, "past_due": 1, "canceled": 2}
    assert report["recurring_statuses"] == ["active", "past_due"]
    assert report["weeks"] == [
        week("2026-W52", "2026-12-21"),
        week("2026-W53", "2026-12-28"),
        week("2027-W01", "2027-01-04", new=1, eur=money(new_mrr=1500)),
        week("2027-W02", "2027-01-11"),
        week("2027-W03", "2027-01-18"),
        week("2027-W04", "2027-01-25"),
        week("2027-W05", "2027-02-01", new=2, eur=money(new_mrr=1800)),
        week("2027-W06", "2027-02-08", churned=1),
        week("2027-W07", "2027-02-15", churned=1, eur=money(one_time=1200, churned_mrr=1500)),
        week("2027-W08", "2027-02-22"),
        week("2027-W09", "2027-03-01", new=1, usd=money(one_time=5000)),
        week("2027-W10", "2027-03-08", new=1, usd=money(new_mrr=2000)),
    ]


async def test_an_empty_service_reports_zeros(settings: Settings, pool: asyncpg.Pool) -> None:
    """With no subscription or order: no currency, every count 0, 12 empty weeks."""
    key = await issue_key(pool, Scope.ADMIN)
    async with app_client(settings, clock=lambda: NOW) as client:
        report = (await client.get("/v1/reports/revenue", headers=bearer(key))).json()
    assert report["currencies"] == {}
    assert set(report["subscriptions"].values()) == {0}
    assert len(report["weeks"]) == 12
    assert all(w["revenue"] == {} for w in report["weeks"])


@pytest.mark.parametrize("scope", [Scope.BILLING, Scope.USAGE])
async def test_revenue_report_needs_the_admin_scope(
    settings: Settings, pool: asyncpg.Pool, scope: Scope
) -> None:
    """Revenue is for operators: a billing or usage key is refused with 403."""
    key = await issue_key(pool, scope)
    async with app_client(settings, clock=lambda: NOW) as client:
        response = await client.get("/v1/reports/revenue", headers=bearer(key))
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
