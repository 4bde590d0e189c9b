"""`billing-service catalog`: apply a catalog file, export the catalog, sync it to Stripe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import asyncpg

from billing_service.catalog_spec import CatalogSpec, dump_catalog_yaml, load_catalog_yaml
from billing_service.cli._runtime import run_with_pool, with_gateway
from billing_service.config import Settings
from billing_service.errors import ValidationFailed
from billing_service.services import catalog, catalog_sync
from billing_service.stripe_gateway import StripeGateway


async def apply_catalog_file(
    pool: asyncpg.Pool, settings: Settings, spec: CatalogSpec, *, dry_run: bool
) -> catalog.ApplyResult:
    gateway = StripeGateway.from_settings(settings)
    try:
        return await catalog.apply_and_sync(pool, gateway, lambda _current: spec, dry_run=dry_run)
    finally:
        if gateway is not None:
            await gateway.close()


def _print_apply_result(result: catalog.ApplyResult, *, stripe_configured: bool) -> None:
    heading = "Would change" if result.dry_run else "Changed"
    print(f"{heading} in the catalog:" if result.changes else "The catalog is up to date.")
    for change in result.changes:
        print(f"  {change}")
    if result.drift:
        print("Drift found in Stripe (the catalog will be restored there):")
        for drift in result.drift:
            print(f"  ! {drift.description} ({drift.event_type}, {drift.stripe_object_id})")
    for done in result.stripe_synced:
        print(f"  stripe: {done}")
    if result.stripe_pending:
        waiting = "would send" if result.dry_run or stripe_configured else "pending; no Stripe key"
        print(f"Stripe ({waiting}):")
        for pending in result.stripe_pending:
            print(f"  {pending}")


def _print_validation_errors(path: Path, exc: ValidationFailed) -> None:
    """`file: field: reason`, one line per problem, as an editor's jump-to-error expects."""
    for error in exc.errors:
        print(f"{path}: {error.field}: {error.message}", file=sys.stderr)


def cmd_catalog_apply(args: argparse.Namespace, settings: Settings) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"billing-service: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        spec = load_catalog_yaml(text)
    except ValidationFailed as exc:
        _print_validation_errors(args.file, exc)
        return 1

    async def apply(pool: asyncpg.Pool) -> int:
        try:
            result = await apply_catalog_file(pool, settings, spec, dry_run=args.dry_run)
        except ValidationFailed as exc:  # the rules that depend on what the database holds
            _print_validation_errors(args.file, exc)
            return 1
        _print_apply_result(result, stripe_configured=settings.stripe_secret_key is not None)
        return 0

    return run_with_pool(settings, apply)


def cmd_catalog_export(args: argparse.Namespace, settings: Settings) -> int:
    async def export(pool: asyncpg.Pool) -> int:
        text = dump_catalog_yaml(await catalog.current_catalog(pool))
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
        return 0

    return run_with_pool(settings, export)


def cmd_catalog_sync(args: argparse.Namespace, settings: Settings) -> int:
    async def sync(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        report = await catalog_sync.sync_catalog(pool, gateway)
        for done in report.done:
            print(f"stripe: {done}")
        if not report.done:
            print("Stripe is up to date.")
        return 0

    return with_gateway(settings, sync)
