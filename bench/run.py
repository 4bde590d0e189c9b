"""The hot path beside its floors, in one run: throughput, latency and memory of the service's
scenarios as ratios to bare Starlette (A) and to the floor that bounds each (B, B2, Btrack1),
the same on 10,000 customers and 1M usage events, and the cross-process invalidation lag.

    .venv/bin/python -m bench.run [--duration 10] [--repeat 3] [--workers 1] [--only a,b,...]

Each repetition measures the floors before and after the service, the service's scenarios
(default settings, then with the entitlement cache off), the growth scenario and the lag; the
order flips every repetition. Figures are medians with the min-max spread over repetitions.
Writes bench/results.json; exits 1 when a target is missed. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import seed
from bench.harness import FLOORS, SCENARIOS, Bench, Floor, Scenario, flipped
from bench.processes import load_average, machine
from bench.report import results_document, tables, target_lines
from bench.summary import Figures
from bench.targets import evaluate, sanity

HERE = Path(__file__).resolve().parent
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BLOCKS = ("growth", "lag")
YEAR_OF_HOURS = 365 * 24  # the heavy customer's hourly history in the 1M-row set
SMALL_HISTORY_HOURS = 7 * 24  # the same customer's in the small set


def _parser() -> argparse.ArgumentParser:
    """The command line; see docs/benchmarks.md for each option."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up before each")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (interleaved)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, every server")
    scenario_names = [s.name for s in SCENARIOS] + list(BLOCKS) + [f.name for f in FLOORS]
    parser.add_argument(
        "--only",
        help="comma-separated subset of: " + ", ".join(scenario_names)
        + " (the floors the chosen scenarios are held against always run)",
    )  # fmt: skip
    parser.add_argument("--lag-trials", type=int, default=200, help="lag trials per repetition")
    parser.add_argument(
        "--history-days", type=int, default=365,
        help="days up to now the usage history request covers (keep it within the service's "
        "documented maximum range)",
    )  # fmt: skip
    parser.add_argument(
        "--history-connections", type=int, default=4,
        help="wrk connections for the usage history scenario (a dashboard's read)",
    )  # fmt: skip
    parser.add_argument(
        "--server-url", default=os.environ.get("BILLING_BENCH_SERVER_URL", SERVER_URL)
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("--keep-databases", action="store_true", help="do not drop them after")
    return parser


def selection(only: str | None) -> tuple[list[Floor], list[Scenario], set[str]]:
    """The floors, service scenarios and blocks (growth, lag) a run covers."""
    if only is None:
        return list(FLOORS), list(SCENARIOS), set(BLOCKS)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {s.name for s in SCENARIOS} | set(BLOCKS) | {f.name for f in FLOORS}
    if unknown := wanted - known:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scenarios = [s for s in SCENARIOS if s.name in wanted]
    needed = {"A"} | {s.floor for s in scenarios} | (wanted & {f.name for f in FLOORS})
    return [f for f in FLOORS if f.name in needed], scenarios, wanted & set(BLOCKS)


def _repetition(
    bench: Bench, repetition: int, floors: list[Floor], scenarios: list[Scenario],
    blocks: set[str],
) -> None:  # fmt: skip
    """One repetition: floors, the service (cache on, then off), floors again in reverse order, then
    growth and the lag; the order flips on odd repetitions."""
    by_name = {f.name: f for f in floors}
    order = flipped([f.name for f in floors], repetition)
    print(f"repetition {repetition + 1}", flush=True)
    for name in order:
        bench.floor(by_name[name], repetition)
    groups = {
        "default": [s for s in scenarios if not s.cold],
        "cold": [s for s in scenarios if s.cold],
    }
    for group in flipped(list(groups), repetition):
        chosen = {s.name: s for s in groups[group]}
        if chosen:
            ordered = [chosen[name] for name in flipped(list(chosen), repetition)]
            bench.scenarios(ordered, repetition, cold=group == "cold")
    for name in reversed(order):
        bench.floor(by_name[name], repetition)
    if "growth" in blocks:
        bench.growth(repetition)
    if "lag" in blocks:
        bench.lag(repetition)


def main() -> int:
    """Seed, run the repetitions, report, write results.json; 0 when every target is met, 1 when one
    is missed, 2 without wrk."""
    args = _parser().parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    floors, scenarios, blocks = selection(args.only)
    started = time.monotonic()
    print(f"machine: {machine()}; load average {load_average():.1f}", flush=True)
    small = asyncio.run(seed.prepare(args.server_url, history_hours=SMALL_HISTORY_HOURS))
    big = None
    try:
        if "growth" in blocks:
            print("seeding 10,000 customers and 1M usage events…", flush=True)
            big = asyncio.run(seed.prepare(args.server_url, history_hours=YEAR_OF_HOURS))
            asyncio.run(seed.grow(big.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "BENCH_"))}
        with tempfile.TemporaryDirectory(prefix="billing-bench-") as scratch:
            bench = Bench(
                duration=args.duration, warmup=args.warmup, connections=args.connections,
                threads=args.threads, workers=args.workers, small=small, big=big,
                scratch=Path(scratch), history_days=args.history_days,
                history_connections=args.history_connections, lag_trials=args.lag_trials, env=env,
            )  # fmt: skip
            for repetition in range(args.repeat):
                _repetition(bench, repetition, floors, scenarios, blocks)
        sizes = {"small": asyncio.run(seed.counts(small.url))}
        if big is not None:
            sizes["1M"] = asyncio.run(seed.counts(big.url))
    finally:
        if not args.keep_databases:
            for database in (small, big):
                if database is not None:
                    asyncio.run(seed.drop_database(args.server_url, database.name))

    figures = Figures(bench.samples)
    targets = evaluate(figures, bench.lags)
    problems = sanity(figures, bench.lags)
    load = figures.load()
    command = " ".join(["python -m bench.run", shlex.join(sys.argv[1:])]).rstrip()
    print(f"\nmachine: {machine()}")
    print(
        f"{command}: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s after a "
        f"{args.warmup:g} s warm-up (history: -c{args.history_connections}, "
        f"{args.history_days} days), {args.workers} worker(s), {args.repeat} repetitions, "
        f"{(time.monotonic() - started) / 60:.0f} min; load average "
        + ("—" if load is None else load.show(lambda v: f"{v:.1f}"))
    )
    for line in tables(figures, bench.lags) + target_lines(targets, problems):
        print(line)
    context = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command,
        "settings": {
            "duration": args.duration, "warmup": args.warmup, "repeat": args.repeat,
            "connections": args.connections, "threads": args.threads, "workers": args.workers,
            "lag_trials": args.lag_trials, "history_days": args.history_days,
            "history_connections": args.history_connections,
        },
        "database_sizes": sizes,
    }  # fmt: skip
    document = results_document(figures, bench.lags, targets, problems, context)
    args.output.write_text(json.dumps(document, indent=2))
    passed = all(t.met for t in targets) and not problems
    print("\nall targets met" if passed else "\ntargets missed")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
