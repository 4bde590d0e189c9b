"""The run's report: tables of the floors, the service, growth and the invalidation lag (each
figure as median and min-max over the repetitions), the targets, and `results.json`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.harness import FLOORS, GROWTH_SCENARIOS, SCENARIOS
from bench.stats import Spread
from bench.summary import Figures, LagSample, lag_spread
from bench.targets import Target


def _rps(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _pct(value: float) -> str:
    return f"{value:.0%}"


def _show(spread: Spread | None, format_one: Any) -> str:
    """A spread with `format_one` applied, or a dash when not measured."""
    return "—" if spread is None else spread.show(format_one)


def _us(value: float) -> str:
    return f"{value:,.0f}"


def _rss(figures: Figures, name: str) -> str:
    """The peak resident set of `name`'s server over the run, in MB."""
    peak = figures.peak_rss_mb(name)
    return "—" if peak is None else f"{peak:.0f}"


def _cpu(figures: Figures, name: str) -> str:
    """Service plus database CPU µs per request, medians."""
    server = figures.spread(name, "server_us")
    database = figures.spread(name, "database_us")
    if server is None:
        return "—"
    return f"{server.median:,.0f}+{database.median:,.0f}" if database else _us(server.median)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the first two left-aligned, numbers right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if index < 2 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def tables(figures: Figures, lags: Sequence[LagSample]) -> list[str]:
    """The report's tables, as lines of text."""
    lines: list[str] = []
    floors = [f for f in FLOORS if figures.has(f.name)]
    if floors:
        lines += [
            "",
            "Floors (bare Starlette + asyncpg; CPU µs per request of the server and of "
            "PostgreSQL's backends)",
        ]
        lines += _table(
            (
                "floor",
                "what",
                "req/s",
                "÷A",
                "p50 ms",
                "p99 ms",
                "svc µs",
                "PG µs",
                "RSS MB",
                "errors",
            ),
            [
                (
                    f.name,
                    f.what,
                    _show(figures.spread(f.name), _rps),
                    _show(figures.ratio(f.name, "A"), _pct) if f.name != "A" else "—",
                    _show(figures.spread(f.name, "p50_ms"), _ms),
                    _show(figures.spread(f.name, "p99_ms"), _ms),
                    _show(figures.spread(f.name, "server_us"), _us),
                    _show(figures.spread(f.name, "database_us"), _us),
                    _rss(figures, f.name),
                    str(figures.errors(f.name)),
                )
                for f in floors
            ],
        )
    scenarios = [s for s in SCENARIOS if figures.has(s.name)]
    if scenarios:
        lines += ["", "The service (req/s; webhooks: events stored/s)"]
        lines += _table(
            (
                "scenario",
                "floor",
                "req/s",
                "÷A",
                "÷floor",
                "p50 ms",
                "p99 ms",
                "svc µs",
                "PG µs",
                "RSS MB",
                "errors",
            ),
            [
                (
                    s.name,
                    s.floor,
                    _show(figures.spread(s.name), _rps),
                    _show(figures.ratio(s.name, "A"), _pct),
                    _show(figures.ratio(s.name, s.floor), _pct),
                    _show(figures.spread(s.name, "p50_ms"), _ms),
                    _show(figures.spread(s.name, "p99_ms"), _ms),
                    _show(figures.spread(s.name, "server_us"), _us),
                    _show(figures.spread(s.name, "database_us"), _us),
                    _rss(figures, s.name),
                    str(figures.errors(s.name)),
                )
                for s in scenarios
            ],
        )
    lines += _billed(figures)
    growth = [name for name in GROWTH_SCENARIOS if figures.has(f"1M:{name}")]
    if growth:
        lines += ["", "Growth: the small database against 10,000 customers and 1M usage events"]
        lines += _table(
            (
                "scenario",
                "",
                "small req/s",
                "1M req/s",
                "1M ÷ small",
                "small p99",
                "1M p99",
                "small svc+PG µs",
                "1M svc+PG µs",
            ),
            [
                (
                    name,
                    "",
                    _show(figures.spread(f"small:{name}"), _rps),
                    _show(figures.spread(f"1M:{name}"), _rps),
                    _show(figures.ratio(f"1M:{name}", f"small:{name}"), _pct),
                    _show(figures.spread(f"small:{name}", "p99_ms"), _ms),
                    _show(figures.spread(f"1M:{name}", "p99_ms"), _ms),
                    _cpu(figures, f"small:{name}"),
                    _cpu(figures, f"1M:{name}"),
                )
                for name in growth
            ],
        )
    if lags:
        trials = sum(len(lag.run.lags_ms) for lag in lags)
        failures = sum(lag.run.failures for lag in lags)
        lines += [
            "",
            "Invalidation lag (track on one process, check on another until it reflects it)",
            f"  p50 {_show(lag_spread(lags, 'p50'), _ms)} ms, "
            f"p99 {_show(lag_spread(lags, 'p99'), _ms)} ms; {trials} trials in {len(lags)} "
            f"series, {failures} did not converge",
        ]
    return lines


def _billed(figures: Figures) -> list[str]:
    """track-billed against track, per repetition, and the meter events its runs wrote."""
    samples = [s for s in figures.samples if s.billed_tracks is not None]
    if not samples:
        return []
    per_repetition = [
        f"r{repetition}: {_show(Figures(in_rep).ratio('track-billed', 'track'), _pct)}"
        for repetition in figures.repetitions
        if (in_rep := [s for s in figures.samples if s.repetition == repetition])
    ]
    written = sum(s.billed_tracks or 0 for s in samples)
    missing = sum(s.unbilled_tracks or 0 for s in samples)
    return [
        "",
        "Billed track (every unit past the allowance: one meter event per track, no Stripe)",
        f"  track-billed ÷ track {_show(figures.ratio('track-billed', 'track'), _pct)} "
        f"({', '.join(per_repetition)}); {written:,} meter events written by the measured "
        f"runs, {missing} tracks without one",
    ]


def target_lines(targets: Sequence[Target], problems: Sequence[str]) -> list[str]:
    """Every target with its verdict, then what makes the run's figures untrustworthy."""
    lines = ["", "Targets (1 worker, 32 connections; judged on the median)"]
    lines += [target.line() for target in targets]
    lines += [f"  {'MISSED':7}  {problem}" for problem in problems]
    return lines


def _spread_json(spread: Spread | None) -> dict[str, float] | None:
    """A spread as JSON: median, min and max."""
    if spread is None:
        return None
    return {"median": spread.median, "min": spread.low, "max": spread.high}


def results_document(
    figures: Figures,
    lags: Sequence[LagSample],
    targets: Sequence[Target],
    problems: Sequence[str],
    context: dict[str, Any],
) -> dict[str, Any]:
    """Everything a later reader needs: the settings, every raw sample, the summarised figures
    and the verdicts."""
    names = list(dict.fromkeys(s.name for s in figures.samples))
    floor_of = {s.name: s.floor for s in SCENARIOS}
    return {
        **context,
        "load_average": _spread_json(figures.load()),
        "figures": {
            name: {
                "throughput": _spread_json(figures.spread(name)),
                "p50_ms": _spread_json(figures.spread(name, "p50_ms")),
                "p99_ms": _spread_json(figures.spread(name, "p99_ms")),
                "server_cpu_us_per_request": _spread_json(figures.spread(name, "server_us")),
                "database_cpu_us_per_request": _spread_json(figures.spread(name, "database_us")),
                "ratio_to_A": _spread_json(figures.ratio(name, "A")),
                "floor": floor_of.get(name),
                "ratio_to_track": _spread_json(figures.ratio(name, "track"))
                if name == "track-billed"
                else None,
                "ratio_to_floor": _spread_json(figures.ratio(name, floor_of[name]))
                if name in floor_of
                else None,
                "errors": figures.errors(name),
                "peak_rss_mb": figures.peak_rss_mb(name),
            }
            for name in names
        },
        "invalidation_lag_ms": {
            "p50": _spread_json(lag_spread(lags, "p50")),
            "p99": _spread_json(lag_spread(lags, "p99")),
            "series": [
                {
                    "repetition": lag.repetition,
                    "p50": lag.p50_ms,
                    "p99": lag.p99_ms,
                    "trials": len(lag.run.lags_ms),
                    "failures": lag.run.failures,
                    "polls": lag.run.polls,
                }
                for lag in lags
            ],
        },
        "targets": [
            {"target": t.label, "measured": _spread_json(t.figure), "met": t.met}
            for t in targets
            if t.measured
        ],
        "problems": list(problems),
        "samples": [asdict(sample) for sample in figures.samples],
    }
