"""The targets the hot path is held to (1 worker, 32 connections, this machine), each judged on
the median of the repetitions, and whether a run met them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import Spread
from bench.summary import Figures, LagSample, lag_spread

RSS_LIMIT_MB = 200.0


@dataclass(frozen=True)
class Target:
    """One target and the figure measured for it (None: not measured in this run)."""

    label: str
    figure: Spread | None
    threshold: float
    at_least: bool  # True: the figure must reach the threshold; False: stay below it
    unit: str  # "%" for fractions, else printed as is after the number

    @property
    def measured(self) -> bool:
        """Whether this run measured the figure."""
        return self.figure is not None

    @property
    def met(self) -> bool:
        """Judged on the median; a target not measured is not a miss."""
        if self.figure is None:
            return True
        if self.at_least:
            return self.figure.median >= self.threshold
        return self.figure.median < self.threshold

    def show(self) -> str:
        """The measured figure, median (min-max), with its unit."""
        if self.figure is None:
            return "not measured in this run"
        if self.unit == "%":
            return self.figure.show(lambda value: f"{value:.0%}")
        return f"{self.figure.show(lambda value: f'{value:,.1f}')} {self.unit}"

    def line(self) -> str:
        """`met`, `MISSED` or `skipped`, the target and its figure."""
        verdict = "skipped" if self.figure is None else "met" if self.met else "MISSED"
        return f"  {verdict:7}  {self.label}: {self.show()}"


def _ratio(figures: Figures, name: str, floor: str, threshold: float, label: str) -> Target:
    """A throughput ratio target: `name` at least `threshold` of `floor`."""
    return Target(label, figures.ratio(name, floor), threshold, at_least=True, unit="%")


def _p99(figures: Figures, name: str, limit_ms: float) -> Target:
    """A latency target: `name`'s p99 below `limit_ms`."""
    figure = figures.spread(name, "p99_ms") if figures.has(name) else None
    return Target(f"{name} p99 < {limit_ms:.0f} ms", figure, limit_ms, at_least=False, unit="ms")


def evaluate(figures: Figures, lags: Sequence[LagSample]) -> list[Target]:
    """Every target, measured or not, in the order of the report."""
    return [
        _ratio(figures, "check", "A", 0.60, "check (warm) ≥ 60 % of A"),
        _ratio(figures, "entitlements", "A", 0.60, "entitlements (warm) ≥ 60 % of A"),
        _ratio(figures, "check-cold", "B", 0.90, "check (cold miss) ≥ 90 % of B"),
        _ratio(figures, "track", "Btrack1", 0.80, "track ≥ 80 % of Btrack1"),
        _ratio(figures, "track-billed", "track", 0.90, "track-billed ≥ 90 % of track"),
        _ratio(figures, "webhooks", "B2", 0.90, "webhook intake (stored/s) ≥ 90 % of B2"),
        _ratio(figures, "healthz", "A", 0.80, "healthz ≥ 80 % of A"),
        _p99(figures, "check", 20.0),
        _p99(figures, "track", 40.0),
        Target(
            "invalidation lag p99 < 50 ms",
            lag_spread(lags, "p99"),
            50.0,
            at_least=False,
            unit="ms",
        ),
        Target(
            "usage history on 1M rows within 2x of small (≥ 50 % of its req/s)",
            figures.ratio("1M:history", "small:history"),
            0.50,
            at_least=True,
            unit="%",
        ),
    ]


def sanity(figures: Figures, lags: Sequence[LagSample]) -> list[str]:
    """What makes a run's figures untrustworthy or the service unfit, whatever the ratios:
    errors, lag trials that never converged, a worker past the memory limit, a billed track
    without its meter event."""
    problems = []
    for name in dict.fromkeys(s.name for s in figures.samples):
        if errors := figures.errors(name):
            problems.append(f"{name}: {errors} errors (non-2xx responses or socket errors)")
        peak = figures.peak_rss_mb(name)
        if peak is not None and peak >= RSS_LIMIT_MB:
            problems.append(f"{name}: a worker reached {peak:.0f} MB (limit {RSS_LIMIT_MB:.0f})")
    billed = [s for s in figures.samples if s.billed_tracks is not None]
    if missing := sum(s.unbilled_tracks or 0 for s in billed):
        problems.append(f"track-billed: {missing} tracks wrote no meter event")
    if billed and not sum(s.billed_tracks or 0 for s in billed):
        problems.append("track-billed: no meter event was written")
    failures = sum(lag.run.failures for lag in lags)
    if failures:
        problems.append(f"invalidation lag: {failures} trials did not converge")
    return problems
