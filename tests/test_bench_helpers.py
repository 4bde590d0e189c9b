"""The benchmark's pure helpers: reading wrk's report, the spread of repeated figures, ratios
within a repetition, percentiles, the order of a repetition and the verdict on targets."""

from __future__ import annotations

import pytest

from bench.harness import flipped
from bench.lag import LagRun
from bench.run import selection
from bench.stats import Spread, percentile, ratios
from bench.summary import Figures, LagSample, Sample
from bench.targets import evaluate, sanity
from bench.wrk import latency_ms, parse_report

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40211/v1/usage/check
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    18.93ms   20.11ms 291.07ms   90.15%
    Req/Sec     1.85k   210.33     2.20k    71.00%
  Latency Distribution
     50%   12.40ms
     75%   19.88ms
     90%   37.02ms
     99%  104.51ms
  18412 requests in 10.01s, 4.62MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   1839.33
Transfer/sec:    472.99KB
"""


def _sample(
    name: str, repetition: int, rps: float, *, stored_per_second: float | None = None
) -> Sample:
    return Sample(name, repetition, rps, 1.0, 5.0, 0, 1.0, stored_per_second=stored_per_second)


def test_wrk_report_is_read_with_errors_summed() -> None:
    """Requests, req/s, p50, p99 are read; socket errors and non-2xx responses add up."""
    report = parse_report(WRK_OUTPUT)
    assert report.requests == 18412
    assert report.requests_per_second == pytest.approx(1839.33)
    assert report.p50_ms == pytest.approx(12.40)
    assert report.p99_ms == pytest.approx(104.51)
    assert report.errors == 2 + 3 + 7


def test_wrk_report_without_latency_distribution_is_refused() -> None:
    """Output from a wrk run without --latency is an error, not a silent zero."""
    without = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%   " not in line)
    with pytest.raises(ValueError, match="lacks"):
        parse_report(without)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("812.00us", 0.812), ("1.20ms", 1.2), ("2.01s", 2010.0), ("1.00m", 60_000.0)],
)
def test_wrk_latency_units_become_milliseconds(text: str, expected: float) -> None:
    """Each of wrk's latency units converts to milliseconds."""
    assert latency_ms(text) == pytest.approx(expected)


def test_spread_is_median_and_range() -> None:
    """A spread is the median with the lowest and highest value, shown as `m (lo-hi)`."""
    spread = Spread.of([3.0, 1.0, 2.0])
    assert (spread.median, spread.low, spread.high, spread.count) == (2.0, 1.0, 3.0, 3)
    assert spread.show(lambda v: f"{v:.0f}") == "2 (1-3)"
    assert Spread.of([4.0]).show(lambda v: f"{v:.0f}") == "4"
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])


def test_percentile_is_nearest_rank() -> None:
    """p99 of 200 samples is the 198th smallest; p50 of 1..100 is 50."""
    values = [float(n) for n in range(1, 201)]
    assert percentile(values, 0.99) == 198.0
    assert percentile([float(n) for n in range(100, 0, -1)], 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0


def test_ratios_pair_repetitions() -> None:
    """Ratios are taken pairwise per repetition; a zero baseline gives 0, not a crash."""
    assert ratios([1.0, 3.0], [2.0, 0.0]) == [0.5, 0.0]
    with pytest.raises(ValueError, match="per repetition"):
        ratios([1.0], [1.0, 2.0])


def test_floor_measured_twice_counts_as_its_mean_and_ratios_stay_within_repetition() -> None:
    """A floor measured before and after the service counts as the mean of both, and a
    scenario's ratio to it is taken within each repetition before the median."""
    figures = Figures(
        [
            _sample("A", 0, 1000.0),
            _sample("check", 0, 600.0),
            _sample("A", 0, 1400.0),
            _sample("A", 1, 500.0),
            _sample("check", 1, 400.0),
            _sample("A", 1, 500.0),
        ]
    )
    assert figures.per_repetition("A") == [1200.0, 500.0]
    ratio = figures.ratio("check", "A")
    assert ratio is not None
    assert (ratio.low, ratio.high) == pytest.approx((0.5, 0.8))
    assert figures.ratio("check", "B") is None


def test_webhook_intake_is_judged_by_stored_events() -> None:
    """Intake's throughput is what was stored per second, not requests answered."""
    sample = _sample("webhooks", 0, 2000.0, stored_per_second=1500.0)
    assert sample.throughput == 1500.0


def test_targets_judge_the_median_and_report_problems() -> None:
    """A ratio target is met on the median; unmeasured targets are skipped, not failed; errors
    and unconverged lag trials are problems."""
    samples = [
        _sample("A", rep, 1000.0) for rep in range(3)
    ] + [  # healthz at 70 %, 85 %, 90 % of A: median 85 % meets 80 %
        _sample("healthz", 0, 700.0),
        _sample("healthz", 1, 850.0),
        _sample("healthz", 2, 900.0),
    ]
    lags = [LagSample(0, LagRun([1.0] * 199 + [80.0], failures=1, polls=200))]
    targets = {t.label: t for t in evaluate(Figures(samples), lags)}
    assert targets["healthz ≥ 80 % of A"].met
    assert not targets["check (warm) ≥ 60 % of A"].measured
    assert targets["check (warm) ≥ 60 % of A"].met
    assert targets["invalidation lag p99 < 50 ms"].met  # p99 of 200 is the 198th: 1 ms
    failing = Sample("check", 0, 10.0, 1.0, 30.0, 4, 1.0)
    problems = sanity(Figures([failing]), lags)
    assert problems == [
        "check: 4 errors (non-2xx responses or socket errors)",
        "invalidation lag: 1 trials did not converge",
    ]
    p99 = {t.label: t for t in evaluate(Figures([failing]), [])}["check p99 < 20 ms"]
    assert not p99.met


def test_order_flips_every_other_repetition() -> None:
    """Even repetitions run in order, odd ones reversed."""
    assert flipped(["A", "B", "C"], 0) == ["A", "B", "C"]
    assert flipped(["A", "B", "C"], 1) == ["C", "B", "A"]


def test_only_adds_the_floors_a_scenario_is_held_against() -> None:
    """`--only track,lag` runs track with A and Btrack1, and the lag block; unknown names stop."""
    floors, scenarios, blocks = selection("track,lag")
    assert [f.name for f in floors] == ["A", "Btrack1"]
    assert [s.name for s in scenarios] == ["track"]
    assert blocks == {"lag"}
    with pytest.raises(SystemExit, match="unknown scenarios: nope"):
        selection("check,nope")
