"""The processes under test: starting a server and waiting for it, sampling its memory, and
describing the machine (cores, CPU, load) the figures come from."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_SECONDS = 60.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_ready(url: str, *, any_status: bool, deadline: float = READY_SECONDS) -> None:
    """Wait for `url` to answer 200, or to answer at all with `any_status` (a floor's only
    route may be POST; uvicorn accepts connections once the lifespan has started)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    return
        except urllib.error.HTTPError:
            if any_status:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready in {deadline:.0f} s")


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], ready_url: str, *, any_status: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` until the block ends; its output is discarded, as in production logs
    written to a file nobody reads during the run."""
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_ready(ready_url, any_status=any_status)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def uvicorn_command(target: str, *, port: int, workers: int) -> list[str]:
    """uvicorn with the settings `billing-service serve` uses: uvloop and httptools when
    installed ("auto"), no access log, no server header, no logging set-up of its own."""
    return [
        *(sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--no-access-log", "--no-server-header"),
        *("--log-level", "warning"),
    ]


def _children(pid: int) -> list[int]:
    """uvicorn's worker processes under a supervisor `pid`."""
    with contextlib.suppress(OSError):
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    return []


def _rss_mb(pid: int) -> float:
    """A process's resident set in MB (0 once it is gone)."""
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


def load_average() -> float:
    """The one-minute load average: how busy the machine was around a measurement."""
    return os.getloadavg()[0]


def machine() -> str:
    """Cores, CPU model, kernel and Python, for the record."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
