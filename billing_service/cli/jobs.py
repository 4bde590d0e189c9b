"""`billing-service jobs`: the periodic jobs, their schedules and runs; run one now."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import asyncpg

from billing_service.cli._runtime import run_with_pool
from billing_service.config import Settings
from billing_service.cron import Cron
from billing_service.jobs import build_jobs
from billing_service.services import reconcile
from billing_service.stripe_gateway import StripeGateway


def cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    async def show(pool: asyncpg.Pool) -> int:
        rows = await pool.fetch(
            "SELECT DISTINCT ON (job) job, status, started_at FROM job_runs "
            "ORDER BY job, started_at DESC"
        )
        last = {row["job"]: row for row in rows}
        now = datetime.now(UTC)
        print(f"{'job':10}  {'schedule (UTC)':16}  {'next run':25}  last run")
        for name, expression in sorted(settings.job_schedules.items()):
            upcoming = Cron.parse(expression).next_after(now).isoformat(timespec="minutes")
            run = last.get(name)
            previous = (
                f"{run['started_at'].isoformat(timespec='seconds')} {run['status']}"
                if run
                else "never"
            )
            print(f"{name:10}  {expression:16}  {upcoming:25}  {previous}")
        return 0

    return run_with_pool(settings, show)


def _why_not_runnable(name: str, settings: Settings) -> str:
    """A job this process cannot run is either unknown or waiting for Stripe."""
    if name == reconcile.JOB:
        return "the reconcile job needs Stripe: set BILLING_STRIPE_SECRET_KEY"
    return f"no job is named {name!r} (jobs: {', '.join(sorted(settings.job_schedules))})"


def cmd_jobs_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one job now, whatever its schedule; the run is logged in job_runs like any other."""

    async def run(pool: asyncpg.Pool) -> int:
        gateway = StripeGateway.from_settings(settings)
        try:
            jobs = {job.name: job for job in build_jobs(settings, pool, gateway)}
            if args.name not in jobs:
                print(f"billing-service: {_why_not_runnable(args.name, settings)}", file=sys.stderr)
                return 1
            report = await jobs[args.name].work()
        finally:
            if gateway is not None:
                await gateway.close()
        print(", ".join(f"{key}: {value}" for key, value in report.counts().items()) or "done")
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if report.errors else 0

    return run_with_pool(settings, run)
