"""The request metrics read exactly as prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from billing_service.metrics import LATENCY_BUCKETS, Metrics

OBSERVATIONS = [
    ("GET", "/healthz", 200, 0.0004),
    ("GET", "/healthz", 200, 0.001),  # on a bound: counted in that bucket
    ("POST", "/v1/usage/check", 200, 0.0031),
    ("POST", "/v1/usage/check", 429, 0.2),
    ("POST", "/v1/usage/check", 200, 7.5),  # past the last bound: +Inf only
    ("GET", "unmatched", 404, 0.0),
]


def _without_created(text: str) -> list[str]:
    """The exposition lines, minus the `_created` timestamps (set when a series first appears)."""
    return [line for line in text.splitlines() if not re.match(r"\S+_created[{ ]", line)]


def test_request_metrics_expose_the_same_text_as_the_library_instruments() -> None:
    """The same observations fed to prometheus_client's Counter and Histogram and to ours give
    the same exposition, line for line (HELP, TYPE, every bucket, count and sum), and each
    series has its `_created` sample."""
    reference = CollectorRegistry()
    requests = Counter(
        "billing_http_requests",
        "HTTP requests by method, route template and status.",
        ["method", "route", "status"],
        registry=reference,
    )
    latency = Histogram(
        "billing_http_request_duration_seconds",
        "HTTP request latency by method and route template.",
        ["method", "route"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    ours = Metrics()
    for method, route, status, seconds in OBSERVATIONS:
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(seconds)
        ours.observe_request(method, route, status, seconds)

    expected = _without_created(generate_latest(reference).decode())
    ours_text = generate_latest(ours.registry).decode()
    wanted = [line for line in expected if "billing_http" in line]
    assert [line for line in _without_created(ours_text) if "billing_http" in line] == wanted
    assert len(wanted) > 40
    for series in ("billing_http_requests", "billing_http_request_duration_seconds"):
        created = re.findall(rf"^{series}_created{{", ours_text, flags=re.MULTILINE)
        reference_created = re.findall(
            rf"^{series}_created{{", generate_latest(reference).decode(), flags=re.MULTILINE
        )
        assert len(created) == len(reference_created)
