"""Schemathesis against `openapi.yaml` and the running service: every check, a bounded number of
examples per operation, no 5xx, and every response as the contract documents it.

The service runs as its own process (`billing-service serve`) with its Stripe calls answered by
the fake Stripe server, so the routes that reach Stripe are fuzzed too.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.resources import openapi_path
from tests.conftest import APP_HOST, WEBHOOK_SECRETS
from tests.stripe_server import StripeServer, sync_example_catalog
from tests.support import free_port, start_service

# Examples per operation and phase; CI can raise it with BILLING_FUZZ_EXAMPLES.
EXAMPLES = int(os.environ.get("BILLING_FUZZ_EXAMPLES", "50"))
SEED = 20261125


async def test_schemathesis_finds_no_server_error_and_no_departure_from_the_contract(
    settings: Settings,
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    admin_key: str,
    stripe_http: StripeServer,
    tmp_path: Path,
) -> None:
    """`schemathesis run --checks all` exits 0 against the live service."""
    await sync_example_catalog(
        pool,
        settings.model_copy(
            update={
                "stripe_secret_key": SecretStr("sk_test_fake"),
                "stripe_api_base": stripe_http.url,
            }
        ),
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env | {
        "BILLING_PORT": str(port),
        "BILLING_LOG_LEVEL": "warning",
        "BILLING_WORKER_ENABLED": "false",
        "BILLING_STRIPE_SECRET_KEY": "sk_test_fake",
        "BILLING_STRIPE_API_BASE": stripe_http.url,
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
        "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
        # The fuzzer probes unauthenticated access on purpose, thousands of times.
        "BILLING_AUTH_FAILURES_PER_MINUTE": "1000000",
        # and the public pricing list as often (its per-address limit has its own test).
        "BILLING_RATE_LIMIT_PUBLIC_PER_ADDRESS": "0",
    }
    service = await start_service(env, base)
    try:
        fuzzer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli",
            "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
            "run", str(openapi_path()),
            "--url", base,
            "--checks", "all",
            "--max-examples", str(EXAMPLES),
            "--seed", str(SEED),
            "--header", f"Authorization: Bearer {admin_key}",
            "--generation-database", "none",
            "--report", "junit", "--report-dir", str(tmp_path),
            "--no-color",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(fuzzer.communicate(), 900)
    finally:
        service.terminate()
        await service.wait()
    report = output.decode()
    assert fuzzer.returncode == 0, report[-20_000:]
