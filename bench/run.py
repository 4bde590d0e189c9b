"""Throughput, latency and memory of the hot path and webhook intake, beside a bare Starlette
baseline in the same run.

For each worker count (1 and 2 by default) it starts a bare Starlette endpoint and then the
service (`billing-service serve`) under the same uvicorn settings on a freshly seeded database,
and drives each with wrk over loopback: usage check, track, the entitlements read, and signed
Stripe webhooks, counting the events actually stored. Results are ratios against the baseline
measured minutes apart on the same machine; the peak RSS of each worker is sampled throughout.

    .venv/bin/python -m bench.run [--duration 15] [--connections 32] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
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

P99_TARGET_MS = 25.0
RSS_TARGET_MB = 200.0
WEBHOOK_SECRET = "whsec_bench_" + secrets.token_hex(8)
# Pre-signed events written per wrk thread and second of run: more than intake can take.
EVENTS_PER_THREAD_SECOND = 4_000


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    script: str
    ratio_target: float | None = None  # of the baseline's requests/s
    stored_target: float | None = None  # webhook events stored per second


SCENARIOS = [
    Scenario("check", "/v1/usage/check", "check.lua", ratio_target=0.50),
    Scenario("track", "/v1/usage/track", "track.lua", ratio_target=0.30),
    Scenario("entitlements", "/v1/customers/bench_0/entitlements", "entitlements.lua"),
    Scenario("webhooks", "/v1/webhooks/stripe", "webhook.lua", stored_target=1_000),
]


@dataclass
class Result:
    workers: int
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    ratio: float | None = None
    ratio_target: float | None = None
    stored_per_second: float | None = None
    stored_target: float | None = None
    peak_rss_mb: float | None = None  # the largest worker process during the scenario

    def misses(self) -> list[str]:
        """The targets this result misses, described."""
        if self.ratio is None and self.stored_per_second is None and self.peak_rss_mb is None:
            return []  # the baseline
        missed = []
        if self.errors:
            missed.append(f"{self.errors} errors")
        if self.p99_ms >= P99_TARGET_MS:
            missed.append(f"p99 {self.p99_ms:.1f} ms")
        if self.ratio_target is not None and (self.ratio or 0) < self.ratio_target:
            missed.append(f"ratio {self.ratio:.0%} < {self.ratio_target:.0%}")
        if self.stored_target is not None and (self.stored_per_second or 0) < self.stored_target:
            missed.append(f"{self.stored_per_second:.0f} stored/s < {self.stored_target:.0f}")
        if self.peak_rss_mb is not None and self.peak_rss_mb >= RSS_TARGET_MB:
            missed.append(f"RSS {self.peak_rss_mb:.0f} MB")
        return missed


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
def running(
    command: list[str], env: dict[str, str], ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_ready(ready_url)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=15)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    return []


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The largest resident set of any worker process, sampled every 100 ms while in use. With
    one worker the serving process is the worker; with more, uvicorn's children are."""

    def __init__(self, process: subprocess.Popen[bytes], workers: int) -> None:
        self._pid = process.pid
        self._workers = workers
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            pids = [self._pid] if self._workers == 1 else _children(self._pid)
            self.peak_mb = max([self.peak_mb, *(_rss_mb(pid) for pid in pids)])

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_signed_events(prefix: Path, *, threads: int, per_thread: int, run: str) -> None:
    """`prefix.N` for each wrk thread N: distinct `customer.updated` events in Stripe's shape,
    each with a `Stripe-Signature` made now (they stay valid for Stripe's 5 minute tolerance)."""
    fixtures = json.loads((HERE.parent / "tests" / "fixtures" / "stripe_objects.json").read_text())
    now = int(time.time())
    secret = WEBHOOK_SECRET.encode()
    for thread in range(1, threads + 1):
        with prefix.with_name(f"{prefix.name}.{thread}").open("w") as out:
            for n in range(per_thread):
                customer = fixtures["customer"] | {"id": f"cus_bench_{n}"}
                event = fixtures["event"] | {
                    "id": f"evt_{run}_{thread}_{n}",
                    "type": "customer.updated",
                    "livemode": False,
                    "created": now,
                    "data": {"object": customer},
                }
                body = json.dumps(event, separators=(",", ":"))
                digest = hmac.new(secret, f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
                out.write(f"t={now},v1={digest}\t{body}\n")


async def count_events(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM stripe_events")
        return count
    finally:
        await conn.close()


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


def measure_baseline(workers: int, env: dict[str, str], measure: dict[str, int]) -> Result:
    port = free_port()
    bare = [
        *(sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port)),
        *("--workers", str(workers), "--no-access-log", "--no-server-header"),
        *("--log-level", "warning"),
    ]
    url = f"http://127.0.0.1:{port}/bare"
    with running(bare, env | {"PYTHONPATH": str(HERE.parent)}, url):
        run_wrk(url, script=None, key=None, nonce="warm", **measure | {"duration": 3})
        rps, p50, p99, errors = run_wrk(url, script=None, key=None, nonce="bare", **measure)
    return Result(workers, "bare starlette", rps, p50, p99, errors)


def measure_service(
    workers: int,
    baseline: Result,
    *,
    env: dict[str, str],
    database_url: str,
    key: str,
    measure: dict[str, int],
    scratch: Path,
) -> list[Result]:
    port = free_port()
    service = [sys.executable, "-m", "billing_service", "serve"]
    service_env = env | {
        "BILLING_DATABASE_URL": database_url,
        "BILLING_PORT": str(port),
        "BILLING_WORKERS": str(workers),
        "BILLING_ENV": "test",
        "BILLING_LOG_FORMAT": "json",
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
    }
    results = []
    with running(service, service_env, f"http://127.0.0.1:{port}/readyz") as process:
        for scenario in SCENARIOS:
            url = f"http://127.0.0.1:{port}{scenario.path}"
            run = f"w{workers}-{scenario.name}-{secrets.token_hex(4)}"
            warm, measured = f"warm-{run}", run
            if scenario.name == "webhooks":
                warm, measured = str(scratch / f"warm-{run}"), str(scratch / run)
                for prefix, seconds in ((warm, 3), (measured, measure["duration"])):
                    per_thread = EVENTS_PER_THREAD_SECOND * seconds * workers
                    write_signed_events(Path(prefix), threads=measure["threads"],
                                        per_thread=per_thread, run=Path(prefix).name)  # fmt: skip
            run_wrk(url, script=scenario.script, key=key, nonce=warm, **measure | {"duration": 3})
            stored_before = asyncio.run(count_events(database_url))
            with PeakRss(process, workers) as rss:
                rps, p50, p99, errors = run_wrk(
                    url, script=scenario.script, key=key, nonce=measured, **measure
                )
            stored = asyncio.run(count_events(database_url)) - stored_before
            webhooks = scenario.stored_target is not None
            results.append(Result(
                workers, scenario.name, rps, p50, p99, errors,
                ratio=rps / baseline.requests_per_second, ratio_target=scenario.ratio_target,
                stored_per_second=stored / measure["duration"] if webhooks else None,
                stored_target=scenario.stored_target, peak_rss_mb=rss.peak_mb,
            ))  # fmt: skip
    return results


def print_table(results: list[Result]) -> None:
    header = ("workers", "scenario", "req/s", "ratio", "stored/s", "p50 ms", "p99 ms", "errors",
              "RSS MB", "missed")  # fmt: skip
    print("{:>7} {:14} {:>8} {:>6} {:>9} {:>7} {:>7} {:>6} {:>7}  {}".format(*header))
    for r in results:
        ratio = f"{r.ratio:.0%}" if r.ratio is not None else "—"
        stored = f"{r.stored_per_second:.0f}" if r.stored_per_second is not None else "—"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "—"
        print(
            f"{r.workers:>7} {r.name:14} {r.requests_per_second:8.0f} {ratio:>6} {stored:>9} "
            f"{r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.errors:6d} {rss:>7}  {'; '.join(r.misses())}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workers", default="1,2", help="uvicorn worker counts to run, comma-separated"
    )
    parser.add_argument(
        "--server-url", default=os.environ.get("BILLING_BENCH_SERVER_URL", SERVER_URL)
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    database_url, key = asyncio.run(prepare_database(args.server_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    measure = {"duration": args.duration, "connections": args.connections, "threads": args.threads}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="billing-bench-") as scratch:
        for workers in (int(n) for n in args.workers.split(",")):
            baseline = measure_baseline(workers, env, measure)
            results.append(baseline)
            results += measure_service(
                workers, baseline, env=env, database_url=database_url, key=key,
                measure=measure, scratch=Path(scratch),
            )  # fmt: skip

    print(f"machine: {machine()}")
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s; targets: check ≥50% "
          f"and track ≥30% of the baseline, webhooks ≥1000 stored/s, p99 <{P99_TARGET_MS:.0f} ms, "
          f"RSS <{RSS_TARGET_MB:.0f} MB per worker, no errors")  # fmt: skip
    print_table(results)
    report = {"machine": machine(), **measure, "results": [asdict(r) for r in results]}
    args.output.write_text(json.dumps(report, indent=2))
    passed = not any(r.misses() for r in results)
    print("targets met" if passed else "targets missed")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
