"""What one repetition measures and in which order: the floors before and after the service,
the service's scenarios (default settings, then with the entitlement cache off), the growth
scenario on the small and the 1M-row database, and the invalidation lag across two processes.
The order flips every other repetition, so drift in the machine's load does not favour a side.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.cpu import CpuMeter, is_local
from bench.lag import measure_lag
from bench.processes import ROOT, PeakRss, free_port, load_average, running, uvicorn_command
from bench.seed import HISTORY_CUSTOMER, HOURLY_FEATURE, BenchDatabase
from bench.summary import LagSample, Sample
from bench.webhooks import write_signed_events
from bench.wrk import WrkReport, run_wrk

WEBHOOK_SECRET = "whsec_bench_" + secrets.token_hex(8)
# Pre-signed events per second of run, split between wrk threads: more than intake can take,
# so that every event sent is new.
EVENTS_PER_SECOND = 6_000
# Set to 0 for the cold-miss scenario: every check reads PostgreSQL.
CACHE_SETTING = "BILLING_ENTITLEMENT_CACHE_SIZE"


@dataclass(frozen=True)
class Floor:
    """A bare Starlette (+ asyncpg) app that bounds what a kind of request can cost."""

    name: str
    target: str  # uvicorn's import string
    path: str
    script: str | None
    what: str


FLOORS = (
    Floor("A0", "bench.bare_app:raw", "/bare", None, "raw ASGI callable, same JSON"),
    Floor("A", "bench.bare_app:app", "/bare", None, "bare Starlette JSON"),
    Floor("B", "bench.floors:pk_select", "/bare", None, "one primary-key SELECT"),
    Floor(
        "B2",
        "bench.floors:conditional_update",
        "/bare",
        None,
        "one conditional UPDATE … RETURNING on a counter row",
    ),
    Floor(
        "Btrack1",
        "bench.track_floor:app",
        "/v1/usage/track",
        "track.lua",
        "a whole track in one round trip (plpgsql function)",
    ),
)


@dataclass(frozen=True)
class Scenario:
    """A request the service is driven with, and the floor it is held against."""

    name: str
    path: str
    script: str | None
    floor: str
    authorized: bool = True
    cold: bool = False  # run with the entitlement cache off
    webhooks: bool = False  # judged by events stored per second
    billed: bool = False  # every request must write a meter event (checked after the run)


SCENARIOS = (
    Scenario("healthz", "/healthz", None, "A", authorized=False),
    Scenario("check", "/v1/usage/check", "check.lua", "B"),
    Scenario("entitlements", "/v1/customers/bench_0/entitlements", "entitlements.lua", "B"),
    Scenario("track", "/v1/usage/track", "track.lua", "Btrack1"),
    Scenario("track-billed", "/v1/usage/track", "track_billed.lua", "Btrack1", billed=True),
    Scenario("webhooks", "/v1/webhooks/stripe", "webhook.lua", "B2", webhooks=True),
    Scenario("check-cold", "/v1/usage/check", "check.lua", "B", cold=True),
)
GROWTH_SCENARIOS = ("check", "track", "history")


def flipped(items: Sequence[str], repetition: int) -> list[str]:
    """`items` in order on even repetitions, reversed on odd ones."""
    return list(items) if repetition % 2 == 0 else list(reversed(items))


@dataclass
class Bench:
    """A run's settings, databases and the samples gathered so far."""

    duration: float
    warmup: float
    connections: int
    threads: int
    workers: int
    small: BenchDatabase
    big: BenchDatabase | None
    scratch: Path
    history_days: int
    history_connections: int
    lag_trials: int
    env: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    lags: list[LagSample] = field(default_factory=list)

    # -- measuring ---------------------------------------------------------------------------

    def _wrk(
        self, url: str, *, seconds: float, script: str | None, key: str | None,
        args: Sequence[str] = (), connections: int | None = None,
    ) -> WrkReport:  # fmt: skip
        """wrk against `url` with the run's connections and threads (or `connections`), JSON and the
        API key."""
        headers = ["Content-Type: application/json"]
        if key is not None:
            headers.append(f"Authorization: Bearer {key}")
        return run_wrk(
            url, duration=seconds, connections=connections or self.connections,
            threads=min(self.threads, connections or self.connections),
            script=script, headers=headers, script_args=args,
        )  # fmt: skip

    def _measure(
        self, name: str, repetition: int, process: subprocess.Popen[bytes], url: str, *,
        script: str | None, key: str | None, args: tuple[str, str], database: str,
        count_stored: bool = False, count_billed: bool = False, connections: int | None = None,
    ) -> Sample:  # fmt: skip
        """Warm up, then measure, with the CPU time the server and `database`'s backends spent
        per request; for webhook intake (`count_stored`) count the events stored, for billed
        tracks (`count_billed`) the run's usage events with and without their meter event."""
        self._wrk(url, seconds=self.warmup, script=script, key=key, args=[args[0]],
                  connections=connections)  # fmt: skip
        stored_before = _count_events(database) if count_stored else 0
        load = load_average()
        cpu = CpuMeter(process.pid, database)
        cpu.start()
        with PeakRss(process, self.workers) as rss:
            report = self._wrk(url, seconds=self.duration, script=script, key=key,
                               args=[args[1]], connections=connections)  # fmt: skip
        cpu.stop()
        stored = _count_events(database) - stored_before if count_stored else None
        billed = _count_billed(database, run=args[1]) if count_billed else (None, None)
        requests = report.requests
        sample = Sample(
            name, repetition, report.requests_per_second, report.p50_ms, report.p99_ms,
            report.errors, load,
            stored_per_second=None if stored is None else stored / round(self.duration),
            peak_rss_mb=rss.peak_mb, billed_tracks=billed[0], unbilled_tracks=billed[1],
            server_us=cpu.server_seconds / requests * 1e6 if requests else None,
            database_us=(
                cpu.database_seconds / requests * 1e6 if requests and is_local(database) else None
            ),
        )  # fmt: skip
        self.samples.append(sample)
        _progress(sample)
        return sample

    # -- the floors --------------------------------------------------------------------------

    def floor(self, floor: Floor, repetition: int) -> None:
        """Start the floor's app under uvicorn on the small database and measure it."""
        port = free_port()
        env = self.env | {"BENCH_DATABASE_URL": self.small.url, "PYTHONPATH": str(ROOT)}
        command = uvicorn_command(floor.target, port=port, workers=self.workers)
        url = f"http://127.0.0.1:{port}{floor.path}"
        with running(command, env, url, any_status=True) as process:
            nonce = f"{floor.name}-{repetition}-{secrets.token_hex(3)}"
            self._measure(
                floor.name, repetition, process, url, script=floor.script, key=None,
                args=(f"warm-{nonce}", nonce), database=self.small.url,
            )  # fmt: skip

    # -- the service -------------------------------------------------------------------------

    @contextlib.contextmanager
    def service(
        self, database: BenchDatabase, *, cold: bool = False
    ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        """`billing-service serve` on `database`: default settings, JSON logs at info to nowhere,
        a webhook secret; with `cold`, the entitlement cache off."""
        port = free_port()
        env = self.env | {
            "BILLING_DATABASE_URL": database.url,
            "BILLING_HOST": "127.0.0.1",
            "BILLING_PORT": str(port),
            "BILLING_WORKERS": str(self.workers),
            "BILLING_ENV": "test",
            "BILLING_LOG_FORMAT": "json",
            "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        }
        if cold:
            env[CACHE_SETTING] = "0"
        command = [sys.executable, "-m", "billing_service", "serve"]
        base = f"http://127.0.0.1:{port}"
        with running(command, env, f"{base}/readyz") as process:
            yield process, base

    def scenarios(self, chosen: Sequence[Scenario], repetition: int, *, cold: bool) -> None:
        """Start the service (cache off with `cold`) and measure each chosen scenario on it."""
        with self.service(self.small, cold=cold) as (process, base):
            for scenario in chosen:
                run = f"r{repetition}-{scenario.name}-{secrets.token_hex(3)}"
                args = (f"warm-{run}", run)
                if scenario.webhooks:
                    args = self._signed_events(run)
                self._measure(
                    scenario.name, repetition, process, base + scenario.path,
                    script=scenario.script,
                    key=self.small.api_key if scenario.authorized else None, args=args,
                    database=self.small.url, count_stored=scenario.webhooks,
                    count_billed=scenario.billed,
                )  # fmt: skip

    def _signed_events(self, run: str) -> tuple[str, str]:
        """Fresh signed events for the warm-up and the measured run; their two file prefixes."""
        prefixes = (self.scratch / f"warm-{run}", self.scratch / run)
        for prefix, seconds in zip(prefixes, (self.warmup, self.duration), strict=True):
            per_thread = int(EVENTS_PER_SECOND * (seconds + 1) * self.workers / self.threads)
            write_signed_events(prefix, secret=WEBHOOK_SECRET, threads=self.threads,
                                per_thread=per_thread, run=prefix.name)  # fmt: skip
        return str(prefixes[0]), str(prefixes[1])

    # -- growth ------------------------------------------------------------------------------

    def history_path(self) -> str:
        """The usage history of the history customer's hourly feature, `history_days` up to now:
        a year of hourly counters in the 1M-row set, a week of them in the small one."""
        until = datetime.now(UTC).replace(microsecond=0)
        since = until - timedelta(days=self.history_days)
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return (
            f"/v1/customers/{HISTORY_CUSTOMER}/usage?feature={HOURLY_FEATURE}"
            f"&from={since.strftime(stamp)}&to={until.strftime(stamp)}"
        )

    def growth(self, repetition: int) -> None:
        """check, track and the usage history on the small database and on the 1M-row one; the
        history (a dashboard's read, not the hot path) with `history_connections` connections."""
        assert self.big is not None
        sets = {"small": self.small, "1M": self.big}
        for label in flipped(list(sets), repetition):
            database = sets[label]
            with self.service(database) as (process, base):
                for name in flipped(GROWTH_SCENARIOS, repetition):
                    path, script = {
                        "check": ("/v1/usage/check", "check.lua"),
                        "track": ("/v1/usage/track", "track.lua"),
                        "history": (self.history_path(), None),
                    }[name]
                    run = f"r{repetition}-{label}-{name}-{secrets.token_hex(3)}"
                    self._measure(
                        f"{label}:{name}", repetition, process, base + path, script=script,
                        key=database.api_key, args=(f"warm-{run}", run), database=database.url,
                        connections=self.history_connections if name == "history" else None,
                    )  # fmt: skip

    # -- invalidation lag --------------------------------------------------------------------

    def lag(self, repetition: int) -> None:
        """Two `serve` processes on the small database; track on one, check on the other."""
        with self.service(self.small) as (_, writer), self.service(self.small) as (_, reader):
            run = asyncio.run(
                measure_lag(writer, reader, api_key=self.small.api_key, trials=self.lag_trials)
            )
        sample = LagSample(repetition, run)
        self.lags.append(sample)
        print(
            f"  lag r{repetition}: p50 {sample.p50_ms:.1f} ms, p99 {sample.p99_ms:.1f} ms, "
            f"{len(run.lags_ms)} trials, {run.failures} failures",
            flush=True,
        )


def _count_events(database_url: str) -> int:
    """Rows in `stripe_events`: intake's stored events, counted around a measured run."""

    async def count() -> int:
        """One connection, one count."""
        conn = await asyncpg.connect(database_url)
        try:
            found: int = await conn.fetchval("SELECT count(*) FROM stripe_events")
            return found
        finally:
            await conn.close()

    return asyncio.run(count())


def _count_billed(database_url: str, *, run: str) -> tuple[int, int]:
    """The measured run's usage events (their idempotency keys start with `run`) with and
    without the meter event usage_track writes for billed overage, under the identifier it
    derives from the event; one snapshot, and both rows commit together, so requests still in
    flight cannot skew it."""

    async def count() -> tuple[int, int]:
        """One connection, one query."""
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                """
                SELECT count(me.id) AS billed, count(*) - count(me.id) AS unbilled
                FROM usage_events ue
                LEFT JOIN meter_events me
                  ON me.identifier
                     = 'usage_' || md5(ue.customer_id::text || ':' || ue.idempotency_key)
                 AND me.value = ue.amount
                WHERE ue.idempotency_key LIKE $1 || '-%'
                """,
                run,
            )
            assert row is not None
            return int(row["billed"]), int(row["unbilled"])
        finally:
            await conn.close()

    return asyncio.run(count())


def _progress(sample: Sample) -> None:
    """One line per measurement while the run goes on."""
    stored = (
        "" if sample.stored_per_second is None else f", {sample.stored_per_second:,.0f} stored/s"
    )
    if sample.billed_tracks is not None:
        stored += f", {sample.billed_tracks:,} meter events ({sample.unbilled_tracks} missing)"
    print(
        f"  {sample.name:14} r{sample.repetition}: "
        f"{sample.requests_per_second:9,.0f} req/s{stored}, p99 {sample.p99_ms:7.1f} ms, "
        f"errors {sample.errors}, load {sample.load:.1f}",
        flush=True,
    )
