"""Instructions per request, which do not move with the machine's load: keep-alive requests fed
to uvicorn's httptools protocol in process (a fake transport, no sockets) under
`valgrind --tool=callgrind`, counted as the difference between runs of N and 2N requests.

    .venv/bin/python -m bench.instructions [--requests 1000] [--check-requests 400]

Prints bare Starlette (A), the service's `GET /healthz` (with `serve`'s protocol, JSON logs at
info to /dev/null) and `POST /v1/usage/check` (the service's process only, not PostgreSQL's).
Needs valgrind; takes a few minutes. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from bench import seed

SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WARM_UP = 200


class _Transport(asyncio.Transport):
    """Enough of a socket for the protocol: `answered` resolves on the response's first write."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: asyncio.Future[None] | None = None
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


async def _drive(
    app: Any, protocol: Any, state: dict[str, Any], requests: list[bytes], n: int
) -> None:
    """Feed `WARM_UP + n` requests, one at a time, each answered before the next."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app, access_log=False, log_config=None, server_header=False)
    config.load()
    loop = asyncio.get_running_loop()
    handler = protocol(config, ServerState(), state, loop)
    transport = _Transport()
    handler.connection_made(transport)
    for i in range(WARM_UP + n):
        transport.answered = loop.create_future()
        handler.data_received(requests[i % len(requests)])
        await transport.answered
        for _ in range(3):  # the rest of the response, sent without waiting on I/O
            await asyncio.sleep(0)


def _check_requests(api_key: str) -> list[bytes]:
    requests = []
    for customer in range(100):
        body = b'{"customer_id":"bench_%d","feature":"ai_calls"}' % customer
        head = (
            b"POST /v1/usage/check HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + api_key.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        requests.append(head + body)
    return requests


async def _serve(scenario: str, n: int, database_url: str, api_key: str) -> None:
    """One counted run: `scenario` requests through the protocol and app."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if scenario == "A":
        from bench.bare_app import app as bare

        request = b"GET /bare HTTP/1.1\r\nHost: bench\r\n\r\n"
        await _drive(bare, HttpToolsProtocol, {}, [request], n)
        return
    from asgi_lifespan import LifespanManager
    from pydantic import SecretStr

    from billing_service.app import create_app
    from billing_service.config import Environment, Settings
    from billing_service.http_protocol import GuardedHttpToolsProtocol

    settings = Settings(
        env=Environment.TEST,
        database_url=SecretStr(database_url),
        log_format="json",
        worker_enabled=False,
    )
    app = create_app(settings, freeze_heap=True)
    async with LifespanManager(app) as manager:
        state: dict[str, Any] = dict(manager._state)
        if scenario == "check":
            requests = _check_requests(api_key)
        else:
            requests = [b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"]
        await _drive(app, GuardedHttpToolsProtocol, state, requests, n)


def _counted(scenario: str, n: int, database_url: str, api_key: str) -> int:
    """Instructions callgrind counted for a whole run of `n` requests (start-up included)."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
        "-m", "bench.instructions", "--drive", scenario, str(n), database_url, api_key,
    ]  # fmt: skip
    env = os.environ | {"BILLING_DATABASE_URL": database_url}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise SystemExit(f"no count from valgrind:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def per_request(scenario: str, n: int, database_url: str, api_key: str) -> int:
    """Instructions of one request: the difference between runs of `2n` and `n` requests."""
    single = _counted(scenario, n, database_url, api_key)
    double = _counted(scenario, 2 * n, database_url, api_key)
    return (double - single) // n


def main() -> int:
    """Seed a small database, count A, healthz and check, print them; 2 without valgrind."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="N for A and healthz")
    parser.add_argument("--check-requests", type=int, default=400, help="N for check")
    parser.add_argument(
        "--server-url", default=os.environ.get("BILLING_BENCH_SERVER_URL", SERVER_URL)
    )
    parser.add_argument("--drive", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        import uvloop

        from billing_service.logs import configure_logging

        scenario, n, database_url, api_key = args.drive
        with open(os.devnull, "w") as devnull:  # the service's JSON lines, written and dropped
            configure_logging("info", "json", stream=devnull, cache_loggers=True)
            uvloop.run(_serve(scenario, int(n), database_url, api_key))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is needed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    database = asyncio.run(seed.prepare(args.server_url, history_hours=24))
    try:
        bare = per_request("A", args.requests, database.url, database.api_key)
        healthz = per_request("healthz", args.requests, database.url, database.api_key)
        check = per_request("check", args.check_requests, database.url, database.api_key)
    finally:
        asyncio.run(seed.drop_database(args.server_url, database.name))
    print(f"A (bare Starlette)  {bare:>10,} instructions/request")
    ratio = f"(A ÷ healthz {bare / healthz:.0%})"
    print(f"healthz             {healthz:>10,} instructions/request  {ratio}")
    print(f"check               {check:>10,} instructions/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
