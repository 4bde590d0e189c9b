"""Throughput and latency of the hot path, each beside a bare Starlette baseline in the same run.

Starts the service (`billing-service serve`, one uvicorn worker) on a freshly seeded database and
a bare Starlette endpoint under the same uvicorn settings, then drives each with wrk over
loopback. Results are ratios against the baseline measured minutes apart on the same machine.

    .venv/bin/python -m bench.run [--duration 15] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

from billing_service.catalog_spec import MeteredLimit, load_catalog_yaml
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.resources import example_catalog_path, migrations_dir
from billing_service.services import api_keys, catalog
from billing_service.services.api_keys import Scope

HERE = Path(__file__).resolve().parent
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DATABASE = "billing_bench"
CUSTOMERS = 100

# name, path, method, wrk script, target ratio of the baseline's requests/s
SCENARIOS = [
    ("check", "/v1/usage/check", "check.lua", 0.50),
    ("track", "/v1/usage/track", "track.lua", 0.30),
    ("entitlements", "/v1/customers/bench_0/entitlements", "entitlements.lua", None),
]


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    ratio: float | None = None
    target: float | None = None


async def prepare_database(server_url: str) -> tuple[str, str]:
    """A fresh database with the example catalog (no meaningful limit) and 100 customers."""
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    await admin.close()
    url = server_url.rsplit("/", 1)[0] + f"/{BENCH_DATABASE}"
    conn = await asyncpg.connect(url)
    await apply_migrations(conn, discover_migrations(migrations_dir()))
    await conn.close()
    pool = await create_pool(url, min_size=1, max_size=2)
    spec = load_catalog_yaml(example_catalog_path().read_text())
    free = spec.plans["free"]
    roomy = MeteredLimit(limit=10**12, soft_limit=10**11, reset="month")
    spec = spec.model_copy(
        update={
            "plans": spec.plans
            | {"free": free.model_copy(update={"features": free.features | {"ai_calls": roomy}})}
        }
    )
    await catalog.apply_catalog(pool, lambda _current: spec)
    await pool.executemany(
        "INSERT INTO customers (external_id, email) VALUES ($1, $2)",
        [(f"bench_{n}", f"bench_{n}@example.com") for n in range(CUSTOMERS)],
    )
    issued = await api_keys.create_key(pool, name="bench", scopes=[Scope.USAGE])
    await pool.close()
    return url, issued.plaintext


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_ready(url: str, deadline: float = 30.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as response,  # noqa: S310 - loopback only
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_ready(ready_url)
        yield
    finally:
        process.terminate()
        process.wait(timeout=15)


def _milliseconds(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"unexpected wrk latency {value!r}")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(
    url: str, *, script: str | None, key: str | None, duration: int, connections: int,
    threads: int, nonce: str,
) -> tuple[float, float, float, int]:  # fmt: skip
    """requests/s, p50 and p99 in ms, and errors (socket errors plus non-2xx responses)."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    command += ["-H", "Content-Type: application/json"]
    if key is not None:
        command += ["-H", f"Authorization: Bearer {key}"]
    if script is not None:
        command += ["-s", str(HERE / script)]
    command += [url, "--", nonce]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _milliseconds(re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _milliseconds(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    socket_errors = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
    if match := re.search(socket_errors, output):
        errors += sum(int(n) for n in match.groups())
    return rps, p50, p99, errors


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--server-url", default=os.environ.get("BILLING_BENCH_SERVER_URL", SERVER_URL)
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    database_url, key = asyncio.run(prepare_database(args.server_url))
    bare_port, service_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    bare = [
        *(sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(bare_port)),
        *("--workers", "1", "--no-access-log", "--no-server-header", "--log-level", "warning"),
    ]
    service = [sys.executable, "-m", "billing_service", "serve"]
    service_env = env | {
        "BILLING_DATABASE_URL": database_url,
        "BILLING_PORT": str(service_port),
        "BILLING_WORKERS": "1",
        "BILLING_ENV": "test",
        "BILLING_LOG_FORMAT": "json",
    }
    measure = {"duration": args.duration, "connections": args.connections, "threads": args.threads}
    results: list[Result] = []

    with running(
        bare, env | {"PYTHONPATH": str(HERE.parent)}, f"http://127.0.0.1:{bare_port}/bare"
    ):
        url = f"http://127.0.0.1:{bare_port}/bare"
        run_wrk(url, script=None, key=None, nonce="warm", **measure | {"duration": args.warmup})
        rps, p50, p99, errors = run_wrk(url, script=None, key=None, nonce="bare", **measure)
        baseline = Result("bare starlette", rps, p50, p99, errors)
    results.append(baseline)

    with running(service, service_env, f"http://127.0.0.1:{service_port}/readyz"):
        for name, path, script, target in SCENARIOS:
            url = f"http://127.0.0.1:{service_port}{path}"
            nonce = secrets.token_hex(4)
            warmup = measure | {"duration": args.warmup}
            run_wrk(url, script=script, key=key, nonce=f"warm-{nonce}", **warmup)
            rps, p50, p99, errors = run_wrk(url, script=script, key=key, nonce=nonce, **measure)
            ratio = rps / baseline.requests_per_second
            results.append(Result(name, rps, p50, p99, errors, ratio=ratio, target=target))

    print(f"machine: {machine()}")
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, one uvicorn worker each")
    header = ("scenario", "req/s", "ratio", "target", "p50 ms", "p99 ms", "errors")
    print("{:16} {:>9} {:>7} {:>7} {:>8} {:>8} {:>7}".format(*header))
    passed = True
    for result in results:
        shown_ratio = f"{result.ratio:.0%}" if result.ratio is not None else "—"
        shown_target = f"≥{result.target:.0%}" if result.target is not None else "—"
        print(
            f"{result.name:16} {result.requests_per_second:9.0f} {shown_ratio:>7} "
            f"{shown_target:>7} "
            f"{result.p50_ms:8.2f} {result.p99_ms:8.2f} {result.errors:7d}"
        )
        if result is not baseline:
            passed &= result.errors == 0 and result.p99_ms < 25
            if result.target is not None and result.ratio is not None:
                passed &= result.ratio >= result.target
    report = {"machine": machine(), **measure, "results": [asdict(r) for r in results]}
    args.output.write_text(json.dumps(report, indent=2))
    print("targets met" if passed else "targets missed")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
