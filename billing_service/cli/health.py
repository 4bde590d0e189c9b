"""`billing-service healthcheck`: is this process's own server answering `/healthz`?

The container image's HEALTHCHECK runs it, so the check needs no shell, curl or inline Python.
"""

from __future__ import annotations

import argparse
import sys

import httpx

from billing_service.config import Settings

HEALTHCHECK_TIMEOUT_SECONDS = 2.0
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def healthz_url(settings: Settings) -> str:
    """Where `serve` with these settings answers: a wildcard bind is reached on loopback."""
    host = _ANY_ADDRESS.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/healthz"


def cmd_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when `/healthz` answers 200, else 1 with one line saying what happened."""
    url = healthz_url(settings)
    try:
        response = httpx.get(url, timeout=HEALTHCHECK_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        print(f"billing-service: {url}: {type(exc).__name__}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"billing-service: {url}: HTTP {response.status_code}", file=sys.stderr)
        return 1
    return 0
