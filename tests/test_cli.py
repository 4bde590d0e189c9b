"""The `billing-service` command, run as a real process against the test database."""

from __future__ import annotations

import os
import re

import asyncpg
import pytest

from billing_service.services import api_keys
from tests.support import billing_service


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    """The process environment with only our database settings, none leaking from the shell."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BILLING_")}
    return env | {"BILLING_DATABASE_URL": database_url, "BILLING_ENV": "test"}


async def test_key_lifecycle_through_the_command(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """create prints the key once, list never shows it, revoke makes it unusable."""
    created = await billing_service(
        cli_env, "keys", "create", "--name", "reports", "--scope", "billing", "usage"
    )
    assert created.code == 0, created.err
    found = re.search(r"key \(shown once\): (bsk_\S+)", created.out)
    assert found is not None
    plaintext = found[1]
    key = await api_keys.authenticate(pool, plaintext)
    assert key is not None
    assert key.scopes == frozenset({"billing", "usage"})

    listing = await billing_service(cli_env, "keys", "list")
    assert listing.code == 0
    assert str(key.id) in listing.out
    assert "active" in listing.out
    assert plaintext not in listing.out + listing.err

    revoked = await billing_service(cli_env, "keys", "revoke", str(key.id))
    assert revoked.code == 0
    assert await api_keys.authenticate(pool, plaintext) is None
    assert "revoked" in (await billing_service(cli_env, "keys", "list")).out


async def test_revoking_an_unknown_key_fails_cleanly(cli_env: dict[str, str]) -> None:
    """An unknown id is a one-line error and exit status 1."""
    run = await billing_service(cli_env, "keys", "revoke", "00000000-0000-0000-0000-000000000000")
    assert run.code == 1
    assert run.err.startswith("billing-service: No API key has id")
    assert "Traceback" not in run.err


async def test_migrate_on_a_current_schema_says_so(cli_env: dict[str, str]) -> None:
    """`migrate` on an up-to-date database applies nothing."""
    run = await billing_service(cli_env, "migrate")
    assert run.code == 0
    assert run.out.strip() == "schema is up to date"
