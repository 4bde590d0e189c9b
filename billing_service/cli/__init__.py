"""The `billing-service` command: serve, dev, migrate, keys, catalog, worker, events, jobs…

Every failure is one line on stderr: configuration errors (exit 2) name the variable, invalid
arguments name the option.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg

from billing_service import __version__
from billing_service.cli.catalog import cmd_catalog_apply, cmd_catalog_export, cmd_catalog_sync
from billing_service.cli.events import cmd_events_list, cmd_events_replay, cmd_reconcile
from billing_service.cli.health import cmd_healthcheck
from billing_service.cli.jobs import cmd_jobs_list, cmd_jobs_run
from billing_service.cli.keys import cmd_keys_create, cmd_keys_list, cmd_keys_revoke, parse_expiry
from billing_service.cli.server import cmd_dev, cmd_migrate, cmd_serve, cmd_worker
from billing_service.config import ConfigurationError, Settings, load_settings
from billing_service.db.migrations import MigrationError
from billing_service.errors import BillingError, ValidationFailed
from billing_service.logs import configure_logging
from billing_service.services.api_keys import Scope


def _add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`keys create | list | revoke`."""
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="mint a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        required=True,
        choices=[s.value for s in Scope],
        help="one or more of admin, billing, usage",
    )
    create.add_argument("--expires-at", type=parse_expiry, help="ISO 8601 time with offset")
    create.set_defaults(handler=cmd_keys_create)
    keys.add_parser("list", help="list keys (never their secrets)").set_defaults(
        handler=cmd_keys_list
    )
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=uuid.UUID)
    revoke.set_defaults(handler=cmd_keys_revoke)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billing-service", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP API")
    serve_parser.add_argument("--host", help="bind address (BILLING_HOST)")
    serve_parser.add_argument("--port", type=int, help="port (BILLING_PORT)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (BILLING_WORKERS)")
    serve_parser.set_defaults(handler=cmd_serve)

    dev_parser = commands.add_parser("dev", help="migrate, create a first admin key, serve")
    dev_parser.add_argument("--host", help="bind address (BILLING_HOST)")
    dev_parser.add_argument("--port", type=int, help="port (BILLING_PORT)")
    dev_parser.set_defaults(handler=cmd_dev)

    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        handler=cmd_migrate
    )
    commands.add_parser(
        "healthcheck", help="exit 0 if the server on BILLING_HOST:BILLING_PORT answers /healthz"
    ).set_defaults(handler=cmd_healthcheck)

    _add_key_commands(commands)

    catalog_commands = commands.add_parser(
        "catalog", help="manage the plan catalog"
    ).add_subparsers(dest="catalog_command", required=True)
    apply_parser = catalog_commands.add_parser("apply", help="make the catalog match a YAML file")
    apply_parser.add_argument("file", type=Path)
    apply_parser.add_argument("--dry-run", action="store_true", help="show changes, apply none")
    apply_parser.set_defaults(handler=cmd_catalog_apply)
    export_parser = catalog_commands.add_parser("export", help="write the catalog as YAML")
    export_parser.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    export_parser.set_defaults(handler=cmd_catalog_export)
    catalog_commands.add_parser("sync", help="push pending catalog changes to Stripe").set_defaults(
        handler=cmd_catalog_sync
    )

    commands.add_parser(
        "worker", help="process Stripe events and deliver outgoing webhooks until stopped"
    ).set_defaults(handler=cmd_worker)
    reconcile_parser = commands.add_parser(
        "reconcile", help="repair subscriptions from Stripe and recover undelivered events"
    )
    reconcile_parser.add_argument("--customer", help="only this customer (your customer id)")
    reconcile_parser.set_defaults(handler=cmd_reconcile)
    events_commands = commands.add_parser("events", help="the webhook ledger").add_subparsers(
        dest="events_command", required=True
    )
    events_list = events_commands.add_parser("list", help="recent events, newest first")
    events_list.add_argument("--status", choices=["pending", "processed", "failed"])
    events_list.add_argument("--limit", type=int, default=50)
    events_list.set_defaults(handler=cmd_events_list)
    events_replay = events_commands.add_parser("replay", help="process events again")
    events_replay.add_argument("event_id", nargs="?", help="a Stripe event id (evt_…)")
    events_replay.add_argument("--failed", action="store_true", help="every failed event")
    events_replay.set_defaults(handler=cmd_events_replay)
    jobs_commands = commands.add_parser("jobs", help="periodic jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    jobs_commands.add_parser("list", help="schedules, next and last runs").set_defaults(
        handler=cmd_jobs_list
    )
    jobs_run = jobs_commands.add_parser("run", help="run a job now")
    jobs_run.add_argument("name", help="reconcile or prune")
    jobs_run.set_defaults(handler=cmd_jobs_run)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        name: value
        for name in ("host", "port", "workers")
        if (value := getattr(args, name, None)) is not None
    }


def _print_field_errors(args: argparse.Namespace, exc: ValidationFailed) -> None:
    """`--option: message` for fields given as options (e.g. `--expires-at`), else `field: …`."""
    for error in exc.errors:
        label = error.field
        if hasattr(args, error.field):
            label = "--" + error.field.replace("_", "-")
        print(f"billing-service: {label}: {error.message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(**_overrides(args))
        configure_logging(settings.log_level, settings.effective_log_format, stream=sys.stderr)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            print(f"billing-service: configuration error: {line}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        _print_field_errors(args, exc)
        return 1
    except (MigrationError, BillingError) as exc:
        print(f"billing-service: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"billing-service: database error: {exc}", file=sys.stderr)
        return 1
