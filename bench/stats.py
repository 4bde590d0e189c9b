"""The arithmetic of a bench run: the median and min-max spread of repeated figures, and
nearest-rank percentiles of latency samples."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """A figure measured in several repetitions: its median and the lowest and highest value."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of `values` (at least one)."""
        if not values:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def show(self, format_one: Callable[[float], str]) -> str:
        """`median (low-high)`, or just the median for a single value or no spread."""
        median = format_one(self.median)
        low, high = format_one(self.low), format_one(self.high)
        if self.count == 1 or low == high:
            return median
        return f"{median} ({low}-{high})"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least `fraction` of all samples
    at or below it (so p99 of 200 samples is the 198th smallest)."""
    if not values:
        raise ValueError("a percentile needs at least one value")
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Pairwise ratios, one per repetition; a zero denominator gives 0 (nothing to compare)."""
    if len(numerators) != len(denominators):
        raise ValueError("ratios pair one value per repetition")
    return [n / d if d else 0.0 for n, d in zip(numerators, denominators, strict=True)]
