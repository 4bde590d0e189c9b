"""`billing-service events` and `reconcile`: inspect and replay the webhook ledger, repair drift."""

from __future__ import annotations

import argparse
import sys

import asyncpg

from billing_service.cli._runtime import run_with_pool, with_gateway
from billing_service.config import Settings
from billing_service.db import stripe_events
from billing_service.services import reconcile
from billing_service.stripe_gateway import StripeGateway


def cmd_events_list(args: argparse.Namespace, settings: Settings) -> int:
    async def show(pool: asyncpg.Pool) -> int:
        found = await stripe_events.select_events(
            pool, status=args.status, after=None, limit=args.limit
        )
        print(f"{'event':32}  {'type':42}  {'status':9}  {'tries':5}  received / last error")
        for event in found:
            received = event.created_at.isoformat(timespec="seconds")
            print(
                f"{event.stripe_event_id:32}  {event.type:42}  {event.status:9}  "
                f"{event.attempts:<5}  {received}  {event.last_error or ''}"
            )
        return 0

    return run_with_pool(settings, show)


def cmd_events_replay(args: argparse.Namespace, settings: Settings) -> int:
    if (args.event_id is None) == (not args.failed):
        print("billing-service: give an EVENT_ID or --failed", file=sys.stderr)
        return 2

    async def replay(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            count = await stripe_events.requeue(conn, stripe_event_id=args.event_id)
        if args.event_id is not None and count == 0:
            print(f"billing-service: no Stripe event has id {args.event_id}", file=sys.stderr)
            return 1
        print(f"requeued {count} event(s); a running worker processes them next")
        return 0

    return run_with_pool(settings, replay)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        report = await reconcile.reconcile(pool, gateway, customer_id=args.customer)
        counts = ", ".join(f"{name}: {value}" for name, value in report.counts().items())
        print(counts)
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if report.errors else 0

    return with_gateway(settings, work)
