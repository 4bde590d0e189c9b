"""What the TypeScript client's tests share: a live `billing-service serve` with the example
catalog synced to the fake Stripe, keys for it, and `npm`/`node` run in clients/typescript."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.doc_examples import ROOT
from tests.live_service import LiveService
from tests.stripe_server import sync_example_catalog
from tests.support import CommandRun

PACKAGE = ROOT / "clients" / "typescript"
NODE_SECONDS = 300


async def client_env(
    service: LiveService, settings: Settings, pool: asyncpg.Pool
) -> dict[str, str]:
    """What the client's suite needs: the example catalog live, keys, and the service's URL."""
    await sync_example_catalog(
        pool,
        settings.model_copy(
            update={
                "stripe_secret_key": SecretStr("sk_test_fake"),
                "stripe_api_base": service.stripe.url,
            }
        ),
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return base_env | {
        "BILLING_URL": service.base,
        "KEY": await issue_key(pool, Scope.BILLING),
        "USAGE_KEY": await issue_key(pool, Scope.USAGE),
    }


def require_node() -> None:
    """Node and the package's dependencies are there (`make test` installs them with npm ci)."""
    assert shutil.which("node"), "Node.js 20+ is needed"
    assert shutil.which("npm"), "npm is needed"
    assert (PACKAGE / "node_modules" / ".package-lock.json").exists(), (
        "clients/typescript has no node_modules: run `npm ci` there (make test does)"
    )


async def run(*command: str, env: dict[str, str] | None = None, cwd: Path = PACKAGE) -> CommandRun:
    """Run a command to completion (output captured), killed if it outlasts NODE_SECONDS."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env if env is not None else dict(os.environ),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), NODE_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(command)} still running after {NODE_SECONDS} s") from None
    assert process.returncode is not None
    return CommandRun(process.returncode, out.decode(), err.decode())


async def build_package() -> None:
    """Compile the package (dist/) as it ships, with tsc."""
    built = await run("npm", "run", "--silent", "build")
    assert built.code == 0, built.out + built.err
