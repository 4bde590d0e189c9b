"""The worker inside a serving process, ledger metrics, and the `events` command."""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg
import httpx

from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client
from tests.routes.test_checkout import seeded
from tests.routes.test_webhooks import (
    customer_with_stripe_account,
    plan_of,
    post_event,
    stripe_price,
)
from tests.stripe_fakes import FakeStripe, stripe_event
from tests.stripe_server import StripeServer
from tests.support import billing_service
from tests.test_cli_startup import stripe_env


async def test_serving_process_applies_a_webhook_without_any_help(
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """With the worker on, a stored event wakes it and the new plan shows within moments."""
    async with app_client(stripe_settings.model_copy(update={"worker_enabled": True})) as client:
        await seeded(client, pool, gateway, billing_key)
        customer = await customer_with_stripe_account(client, pool, gateway, billing_key)
        subscription = fake_stripe.add_subscription(
            customer, await stripe_price(pool, "pro_monthly")
        )
        await post_event(client, stripe_event("customer.subscription.created", subscription))
        for _ in range(50):
            if await plan_of(client, billing_key) == "pro":
                break
            await asyncio.sleep(0.1)
        assert await plan_of(client, billing_key) == "pro"
        metrics = (await client.get("/metrics")).text
    assert 'billing_webhook_events_received_total{outcome="new"} 1.0' in metrics
    assert (
        'billing_webhook_events_processed_total{type="customer.subscription.created"} 1.0'
        in metrics
    )
    assert "billing_webhook_events_pending 0.0" in metrics


async def test_metrics_report_the_oldest_pending_event(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An event waiting for the worker shows in the pending count and its age."""
    await post_event(stripe_client, stripe_event("customer.updated", {"id": "cus_1"}))
    await pool.execute("UPDATE stripe_events SET created_at = now() - interval '90 seconds'")
    text = (await stripe_client.get("/metrics")).text
    assert "billing_webhook_events_pending 1.0" in text
    age = next(
        line for line in text.splitlines()
        if line.startswith("billing_webhook_oldest_pending_age_seconds ")
    )  # fmt: skip
    assert float(age.split()[1]) >= 90


async def test_events_command_lists_and_replays_failed_events(
    cli_env: dict[str, str], stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """`events list --status failed` shows dead letters; `events replay --failed` requeues them."""
    event = stripe_event("customer.updated", {"id": "cus_1"})
    await post_event(stripe_client, event)
    await pool.execute(
        "UPDATE stripe_events SET status = 'failed', attempts = 10, last_error = 'boom'"
    )
    listing = await billing_service(cli_env, "events", "list", "--status", "failed")
    assert listing.code == 0, listing.err
    assert event["id"] in listing.out
    assert "boom" in listing.out

    replay = await billing_service(cli_env, "events", "replay", "--failed")
    assert replay.code == 0
    assert "requeued 1 event(s)" in replay.out
    assert await pool.fetchval("SELECT status FROM stripe_events") == "pending"
    unknown = await billing_service(cli_env, "events", "replay", "evt_missing")
    assert unknown.code == 1
    neither = await billing_service(cli_env, "events", "replay")
    assert neither.code == 2


async def test_stripe_commands_without_a_key_fail_clearly(cli_env: dict[str, str]) -> None:
    """`reconcile` and `worker` need Stripe and say which setting is missing."""
    for command in ("reconcile", "worker"):
        run = await billing_service(cli_env, command)
        assert run.code == 1, command
        assert "BILLING_STRIPE_SECRET_KEY" in run.err


async def test_the_worker_command_runs_the_periodic_jobs_too(
    cli_env: dict[str, str], stripe_http: StripeServer
) -> None:
    """`billing-service worker` does all the background work `serve` would with the worker
    on, the job scheduler included, so a deployment that splits them still reconciles and
    prunes on schedule."""
    env = cli_env | stripe_env(stripe_http) | {"BILLING_LOG_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing_service", "worker",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    started: dict[str, object] = {}
    try:
        async with asyncio.timeout(30):
            async for line in process.stderr:
                if line.startswith(b"{"):
                    event = json.loads(line)
                    if event["event"] == "scheduler.started":
                        started = event
                        break
    finally:
        process.kill()  # only its start is under test; leftover work may slow a clean stop
        await process.communicate()
    assert started["jobs"] == ["prune", "reconcile"]
