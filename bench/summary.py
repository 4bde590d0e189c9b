"""From raw samples to the figures the bench reports: per repetition, each figure is the mean of
its samples in that repetition (a floor is measured before and after the service); ratios are
taken within a repetition; every figure is then reported as the median and min-max spread over
the repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.lag import LagRun
from bench.stats import Spread, percentile, ratios


@dataclass(frozen=True)
class Sample:
    """One wrk measurement of one server (a floor, a service scenario, a growth scenario)."""

    name: str
    repetition: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    load: float  # the one-minute load average when it started
    stored_per_second: float | None = None  # webhook intake: events actually stored
    peak_rss_mb: float | None = None
    server_us: float | None = None  # CPU time of the serving processes per request
    database_us: float | None = None  # CPU time of the database's backends per request
    billed_tracks: int | None = None  # billed track: the run's tracks that wrote a meter event
    unbilled_tracks: int | None = None  # … and those that did not (must be 0)

    @property
    def throughput(self) -> float:
        """What the scenario is judged by: stored events/s for intake, else requests/s."""
        if self.stored_per_second is not None:
            return self.stored_per_second
        return self.requests_per_second


@dataclass(frozen=True)
class LagSample:
    """One repetition's series of invalidation-lag trials."""

    repetition: int
    run: LagRun

    @property
    def p50_ms(self) -> float:
        """The series' median lag (infinite when no trial converged)."""
        return percentile(self.run.lags_ms, 0.50) if self.run.lags_ms else float("inf")

    @property
    def p99_ms(self) -> float:
        """The series' 99th percentile lag (infinite when no trial converged)."""
        return percentile(self.run.lags_ms, 0.99) if self.run.lags_ms else float("inf")


class Figures:
    """Per-repetition values of the samples of one run."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.repetitions = sorted({s.repetition for s in samples})

    def has(self, name: str) -> bool:
        """Whether the run measured `name` at all."""
        return any(s.name == name for s in self.samples)

    def per_repetition(self, name: str, field: str = "throughput") -> list[float]:
        """The mean of `field` over `name`'s samples, one value per repetition that has any."""
        values = []
        for repetition in self.repetitions:
            found = [
                float(value)
                for s in self.samples
                if s.name == name
                and s.repetition == repetition
                and (value := getattr(s, field)) is not None
            ]
            if found:
                values.append(statistics.fmean(found))
        return values

    def spread(self, name: str, field: str = "throughput") -> Spread | None:
        """The median and spread of `field` over the repetitions; None when never measured."""
        values = self.per_repetition(name, field)
        return Spread.of(values) if values else None

    def ratio(self, name: str, baseline: str) -> Spread | None:
        """`name`'s throughput over `baseline`'s, within each repetition (those that measured
        both); None when either is missing from the run."""
        pairs = [
            (mine, theirs)
            for repetition in self.repetitions
            for mine in self._mean(name, repetition)
            for theirs in self._mean(baseline, repetition)
        ]
        if not pairs:
            return None
        return Spread.of(ratios([p[0] for p in pairs], [p[1] for p in pairs]))

    def _mean(self, name: str, repetition: int) -> list[float]:
        """[the mean throughput of `name` in `repetition`], or [] when it was not measured."""
        found = [
            s.throughput for s in self.samples if s.name == name and s.repetition == repetition
        ]
        return [statistics.fmean(found)] if found else []

    def errors(self, name: str) -> int:
        """Errors over every sample of `name`."""
        return sum(s.errors for s in self.samples if s.name == name)

    def peak_rss_mb(self, name: str) -> float | None:
        """The largest resident set of `name`'s server over the run."""
        peaks = [s.peak_rss_mb for s in self.samples if s.name == name and s.peak_rss_mb]
        return max(peaks) if peaks else None

    def load(self) -> Spread | None:
        """The machine's one-minute load average over the run's measurements."""
        loads = [s.load for s in self.samples]
        return Spread.of(loads) if loads else None


def lag_spread(lags: Sequence[LagSample], which: str) -> Spread | None:
    """The median and spread of each repetition's p50 or p99 lag."""
    if not lags:
        return None
    return Spread.of([lag.p50_ms if which == "p50" else lag.p99_ms for lag in lags])
