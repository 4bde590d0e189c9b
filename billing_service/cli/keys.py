"""`billing-service keys`: mint, list and revoke API keys."""

from __future__ import annotations

import argparse
from datetime import datetime

import asyncpg

from billing_service.cli._runtime import run_with_pool
from billing_service.config import Settings
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope


def parse_expiry(value: str) -> datetime:
    """`--expires-at`: an ISO 8601 time with a UTC offset (whether it is future is checked when
    the key is minted)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time, e.g. 2027-01-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC offset, e.g. 2027-01-01T00:00:00Z")
    return moment


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    async def create(pool: asyncpg.Pool) -> int:
        issued = await api_keys.create_key(
            pool, name=args.name, scopes=[Scope(s) for s in args.scope], expires_at=args.expires_at
        )
        print(f"id: {issued.key.id}\nscopes: {','.join(sorted(issued.key.scopes))}")
        print(f"key (shown once): {issued.plaintext}")
        return 0

    return run_with_pool(settings, create)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    async def show(pool: asyncpg.Pool) -> int:
        print(f"{'id':36}  {'prefix':12}  {'status':8}  {'scopes':20}  {'last used':25}  name")
        now = datetime.now().astimezone()
        for key in await api_keys.list_keys(pool):
            status = "active"
            if key.revoked_at is not None:
                status = "revoked"
            elif key.expires_at is not None and key.expires_at <= now:
                status = "expired"
            last_used = (
                key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
            )
            scopes = ",".join(sorted(key.scopes))
            columns = (str(key.id), key.prefix, status, scopes, last_used)
            print(
                f"{columns[0]:36}  {columns[1]:12}  {columns[2]:8}  {columns[3]:20}  "
                f"{columns[4]:25}  {key.name}"
            )
        return 0

    return run_with_pool(settings, show)


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke(pool: asyncpg.Pool) -> int:
        key = await api_keys.revoke_key(pool, args.id)
        print(f"revoked {key.id} ({key.name})")
        return 0

    return run_with_pool(settings, revoke)
