"""Driving wrk and reading its report: requests per second, latency percentiles and errors."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# A request slower than this is counted by wrk as a timeout (an error) and left out of latency.
TIMEOUT_SECONDS = 5

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"


@dataclass(frozen=True)
class WrkReport:
    """One wrk run as the bench uses it."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx responses


def latency_ms(value: str) -> float:
    """wrk's latency text (`812.00us`, `1.20ms`, `2.01s`, `1.00m`) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"unexpected wrk latency {value!r}")
    number, unit = match.groups()
    return float(number) * _UNITS_MS[unit]


def _required(pattern: str, output: str) -> str:
    """The first group of `pattern` in wrk's output, which must be there."""
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
    return match.group(1)


def parse_report(output: str) -> WrkReport:
    """Read `wrk --latency` output; a report without the latency distribution is refused."""
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(_SOCKET_ERRORS, output):
        errors += sum(int(n) for n in match.groups())
    return WrkReport(
        requests=int(_required(r"(\d+) requests in ", output)),
        requests_per_second=float(_required(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=latency_ms(_required(r"^\s+50%\s+(\S+)", output)),
        p99_ms=latency_ms(_required(r"^\s+99%\s+(\S+)", output)),
        errors=errors,
    )


def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    script: str | None = None,
    headers: Sequence[str] = (),
    script_args: Sequence[str] = (),
) -> WrkReport:
    """One wrk run over loopback; `script` is a Lua file in bench/, `script_args` reach its
    `init(args)`."""
    command = [
        *("wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s"),
        *("--latency", "--timeout", f"{TIMEOUT_SECONDS}s"),
    ]
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(HERE / script)]
    command += [url, "--", *script_args]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return parse_report(completed.stdout)
