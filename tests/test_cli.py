"""The `billing-service` command, run as a real process against the test database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import asyncpg
import httpx

from billing_service.catalog_spec import load_catalog_yaml
from billing_service.resources import example_catalog_path
from billing_service.services import api_keys
from tests.support import billing_service, free_port


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


async def test_catalog_apply_rejects_a_bad_file_naming_the_field(
    cli_env: dict[str, str], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A malformed catalog prints `file: path: reason`, exits 1 and changes nothing."""
    bad = tmp_path / "catalog.yaml"
    bad.write_text(example_catalog_path().read_text().replace("interval: year", "interval: 1"))
    run = await billing_service(cli_env, "catalog", "apply", str(bad))
    assert run.code == 1
    assert f"{bad}: plans.pro.prices.pro_yearly.interval: " in run.err
    assert "Traceback" not in run.err
    assert await pool.fetchval("SELECT count(*) FROM plans") == 0


async def test_catalog_dry_run_then_apply_then_export(
    cli_env: dict[str, str], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Dry run shows and keeps nothing; apply keeps it; export writes it back as YAML."""
    example = str(example_catalog_path())
    dry = await billing_service(cli_env, "catalog", "apply", example, "--dry-run")
    assert dry.code == 0, dry.err
    assert "Would change in the catalog:" in dry.out
    assert "+ price pro_monthly: 1900 usd/month (plan pro)" in dry.out
    assert await pool.fetchval("SELECT count(*) FROM plans") == 0

    applied = await billing_service(cli_env, "catalog", "apply", example)
    assert applied.code == 0, applied.err
    assert "Stripe (pending; no Stripe key):" in applied.out
    assert await pool.fetchval("SELECT count(*) FROM plans") == 4

    exported = tmp_path / "exported.yaml"
    run = await billing_service(cli_env, "catalog", "export", "--output", str(exported))
    assert run.code == 0
    assert load_catalog_yaml(exported.read_text()) == load_catalog_yaml(
        example_catalog_path().read_text()
    )
    again = await billing_service(cli_env, "catalog", "apply", str(exported))
    assert "The catalog is up to date." in again.out


async def test_catalog_dry_run_of_an_empty_file_fails_as_the_apply_would(
    cli_env: dict[str, str], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """An empty file over a live catalog: the dry run already names the default-plan rule."""
    applied = await billing_service(cli_env, "catalog", "apply", str(example_catalog_path()))
    assert applied.code == 0, applied.err
    empty = tmp_path / "catalog.yaml"
    empty.write_text("")

    for extra in (["--dry-run"], []):
        run = await billing_service(cli_env, "catalog", "apply", str(empty), *extra)
        assert run.code == 1, run.out
        assert f"{empty}: plans: " in run.err
        assert "default: true" in run.err
        assert "Traceback" not in run.err
    assert await pool.fetchval("SELECT count(*) FROM plans WHERE active") == 4


async def test_catalog_sync_without_a_stripe_key_fails_clearly(cli_env: dict[str, str]) -> None:
    """`catalog sync` needs Stripe and says which setting is missing."""
    run = await billing_service(cli_env, "catalog", "sync")
    assert run.code == 1
    assert "BILLING_STRIPE_SECRET_KEY" in run.err


async def test_dev_migrates_mints_a_key_loads_the_example_catalog_and_serves(
    empty_database: str,
) -> None:
    """`billing-service dev` on an empty database: ready to use, with nothing set up by hand."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BILLING_")}
    env |= {"BILLING_DATABASE_URL": empty_database, "BILLING_PORT": str(free_port())}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing_service", "dev",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{env['BILLING_PORT']}"
        async with httpx.AsyncClient(base_url=base) as http:
            ready = await _wait_ready(http)
            assert ready.status_code == 200
            assert process.stdout is not None
            printed = await asyncio.wait_for(process.stdout.readuntil(b"\n\n    bsk_"), 5)
            assert b"Admin API key (shown once" in printed
            key = "bsk_" + (await process.stdout.readline()).decode().strip()
            plans = await http.get("/v1/plans", headers={"Authorization": f"Bearer {key}"})
            keys = [plan["key"] for plan in plans.json()["data"]]
            assert keys == ["free", "pro", "credits", "team"]
            console = await asyncio.wait_for(
                process.stdout.readuntil(b"(sign in with this key)"), 5
            )
            assert f"Operator console: {base}/console".encode() in console
            await _console_shows_the_example_catalog(http, key)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)


async def _console_shows_the_example_catalog(http: httpx.AsyncClient, key: str) -> None:
    """Signing in to the console with the printed key (a plain-http cookie in development)
    shows a working, empty overview and the example catalog."""
    form = await http.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    signed = await http.post("/console/sign-in", data={"csrf": token[1], "key": key})
    assert signed.status_code == 303, signed.text
    overview = await http.get("/console")
    assert overview.status_code == 200
    assert 'data-figure="active">0<' in overview.text
    catalog = await http.get("/console/catalog")
    assert all(f'data-plan="{plan}"' in catalog.text for plan in ("free", "pro", "credits"))


async def _wait_ready(http: httpx.AsyncClient) -> httpx.Response:
    """`/readyz` once it answers 200; a generous bound, as `dev` runs initdb and migrations on a
    machine that may be busy."""
    for _ in range(400):
        try:
            response = await http.get("/readyz")
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 200:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError("the service did not become ready")


async def test_jobs_are_listed_and_run_on_demand(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """`jobs list` shows schedules and last runs; `jobs run prune` runs and logs a run."""
    listing = await billing_service(cli_env, "jobs", "list")
    assert listing.code == 0, listing.err
    assert "prune" in listing.out
    assert "0 3 * * *" in listing.out
    run = await billing_service(cli_env, "jobs", "run", "prune")
    assert run.code == 0, run.err
    assert "stripe_events: 0" in run.out
    assert await pool.fetchval("SELECT status FROM job_runs WHERE job = 'prune'") == "succeeded"
    assert "succeeded" in (await billing_service(cli_env, "jobs", "list")).out
    without_stripe = await billing_service(cli_env, "jobs", "run", "reconcile")
    assert without_stripe.code == 1
    assert "BILLING_STRIPE_SECRET_KEY" in without_stripe.err
