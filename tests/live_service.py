"""A real `billing-service serve` on a free port, its Stripe calls answered by the fake Stripe:
the service the docs, the clients' suites and the browser test call over HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tests.conftest import APP_HOST, WEBHOOK_SECRETS
from tests.stripe_server import StripeServer, stripe_server
from tests.support import free_port, start_service


@dataclass(frozen=True)
class LiveService:
    """The running service: its URL, its environment (the CLI's too) and its fake Stripe."""

    base: str
    env: dict[str, str]
    stripe: StripeServer


def service_env(database_url: str, port: int, stripe: StripeServer, **extra: str) -> dict[str, str]:
    """`serve`'s environment: this session's database, the fake Stripe, nothing from the shell.
    No background worker runs: tests empty tables between them and drive the work themselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return env | {
        "BILLING_DATABASE_URL": database_url,
        "BILLING_ENV": "test",
        "BILLING_PORT": str(port),
        "BILLING_LOG_LEVEL": "warning",
        "BILLING_WORKER_ENABLED": "false",
        "BILLING_STRIPE_SECRET_KEY": "sk_test_fake",
        "BILLING_STRIPE_API_BASE": stripe.url,
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
        "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
        **extra,
    }


@asynccontextmanager
async def live_service(database_url: str, **extra: str) -> AsyncIterator[LiveService]:
    """One `serve` until the block ends; `extra` adds settings (`BILLING_CORS_ORIGINS=…`)."""
    async with stripe_server() as stripe:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = service_env(database_url, port, stripe, **extra)
        service = await start_service(env, base)
        try:
            yield LiveService(base, env, stripe)
        finally:
            service.terminate()
            await service.wait()
