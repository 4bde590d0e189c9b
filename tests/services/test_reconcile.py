"""Reconciliation and the daily job: drift repaired from Stripe, lost events recovered, one run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from billing_service.cron import Cron
from billing_service.jobs import Job, run_once_across_replicas
from billing_service.services import maintenance, reconcile
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import seeded
from tests.routes.test_webhooks import (
    customer_with_stripe_account,
    drain,
    plan_of,
    post_event,
    stripe_price,
)
from tests.stripe_fakes import FakeStripe, stripe_error, stripe_event


async def test_reconcile_repairs_subscriptions_whose_webhooks_were_lost(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A subscription Stripe has but we never heard of is mirrored, and the run is logged."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_monthly"))
    assert await plan_of(stripe_client, billing_key) == "free"

    report = await reconcile.reconcile(pool, gateway)

    assert report.counts() == {"customers": 1, "repaired": 1, "events_recovered": 0}
    assert await plan_of(stripe_client, billing_key) == "pro"
    run = await pool.fetchrow("SELECT job, status, counts, finished_at FROM job_runs")
    assert run is not None
    assert (run["job"], run["status"]) == ("reconcile", "succeeded")
    assert run["counts"] == report.counts()
    assert run["finished_at"] is not None
    again = await reconcile.reconcile(pool, gateway, customer_id="user_1")
    assert again.repaired == 0


async def test_reconcile_recovers_events_stripe_could_not_deliver(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Events Stripe lists as undelivered are added to the ledger and then processed."""
    await seeded(stripe_client, pool, gateway, billing_key)
    customer = await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    subscription = fake_stripe.add_subscription(customer, await stripe_price(pool, "pro_yearly"))
    lost = stripe_event("customer.subscription.created", subscription)
    fake_stripe.undelivered_events.append(lost)
    events_calls_before = len(fake_stripe.calls_to("GET", "/v1/events"))

    report = await reconcile.reconcile(pool, gateway)
    await drain(pool, gateway)

    assert report.events_recovered == 1
    [call] = fake_stripe.calls_to("GET", "/v1/events")[events_calls_before:]
    assert call.form["delivery_success"] == "false"
    assert await pool.fetchval("SELECT status FROM stripe_events WHERE stripe_event_id = $1",
                               lost["id"]) == "processed"  # fmt: skip
    assert (await reconcile.reconcile(pool, gateway)).events_recovered == 0


async def test_a_reconcile_error_is_recorded_in_the_run(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A customer Stripe cannot answer for fails alone; the run says so."""
    await seeded(stripe_client, pool, gateway, billing_key)
    await customer_with_stripe_account(stripe_client, pool, gateway, billing_key)
    fake_stripe.failures["/v1/subscriptions"] = stripe_error(400, "invalid_request_error")
    report = await reconcile.reconcile(pool, gateway)
    assert len(report.errors) == 1
    assert report.errors[0].startswith("user_1: ")
    assert await pool.fetchval("SELECT status FROM job_runs") == "failed"


async def test_a_due_job_runs_in_one_replica_only(pool: asyncpg.Pool) -> None:
    """Replicas waking together for one slot: one runs the job, the others skip that slot."""
    runs = 0

    async def work() -> maintenance.PruneReport:
        nonlocal runs
        runs += 1
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO job_runs (job, status) VALUES ('demo', 'succeeded')")
        await asyncio.sleep(0.05)
        return maintenance.PruneReport()

    job = Job("demo", Cron.parse("0 3 * * *"), work)
    slot = datetime.now(UTC) - timedelta(seconds=1)
    results = await asyncio.gather(
        *(run_once_across_replicas(pool, job, slot=slot) for _ in range(4))
    )
    assert sorted(results) == [False, False, False, True]
    assert runs == 1
    assert await run_once_across_replicas(pool, job, slot=slot) is False  # that slot is done
    later = datetime.now(UTC) + timedelta(seconds=1)
    await asyncio.sleep(1.1)
    assert await run_once_across_replicas(pool, job, slot=later) is True  # the next slot runs


async def test_the_prune_job_deletes_only_what_outlived_the_retention(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Old processed events go, recent and pending ones stay; the run is logged."""
    for n in range(3):
        await post_event(stripe_client, stripe_event("customer.updated", {"id": f"cus_{n}"}))
    await pool.execute(
        "UPDATE stripe_events SET status = 'processed', created_at = now() - interval '101 days', "
        "stripe_created_at = now() - interval '101 days', "
        "processed_at = now() - interval '100 days' "
        "WHERE stripe_event_id = (SELECT min(stripe_event_id) FROM stripe_events)"
    )
    report = await maintenance.prune(pool, retention_days=90)
    assert report.deleted["stripe_events"] == 1
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 2
    run = await pool.fetchrow("SELECT status, counts FROM job_runs WHERE job = 'prune'")
    assert run is not None
    assert run["status"] == "succeeded"
    assert run["counts"]["stripe_events"] == 1
