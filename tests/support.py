"""Helpers the tests share: database URLs, and webhook signatures made as Stripe makes them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

ADMIN_DATABASE = "postgres"


def with_database(url: str, database: str) -> str:
    """The same server URL pointed at another database (host/port or socket URLs alike)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def stripe_signature_header(
    payload: bytes, secret: str, *, timestamp: int | None = None, scheme: str = "v1"
) -> str:
    """A `Stripe-Signature` value: HMAC-SHA256 of `{timestamp}.{payload}` under the secret."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    signed = f"{signed_at}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={signed_at},{scheme}={digest}"


@dataclass(frozen=True)
class CommandRun:
    code: int
    out: str
    err: str


async def billing_service(env: dict[str, str], *args: str) -> CommandRun:
    """Run the `billing-service` command as a separate process, as an operator would."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing_service", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return CommandRun(process.returncode, out.decode(), err.decode())


def free_port() -> int:
    """A loopback port nothing listens on right now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_service(env: dict[str, str], base: str) -> asyncio.subprocess.Process:
    """`billing-service serve` as its own process, returned once `/readyz` answers 200."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing_service", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(100):
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("the service did not start")
