"""The Makefile installs what each target needs, and only when it is missing or stale.

Each case runs the real `make` in dry-run mode (`-n` prints the commands it would run) on a copy of
the Makefile and pyproject.toml, with the venv's stamps in the state the case describes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ".venv/.installed-runtime"
DEV = ".venv/.installed-dev"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder with the Makefile and pyproject.toml, as a fresh clone has them."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    old = time.time() - 3600
    os.utime(tmp_path / "pyproject.toml", (old, old))
    return tmp_path


def installed(folder: Path, *stamps: str) -> None:
    """A venv with uv in it and the given stamps, newer than pyproject.toml."""
    for path in (".venv/bin/python", ".venv/bin/uv", *stamps):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).touch()


def would_run(folder: Path, target: str) -> str:
    """What `make TARGET` would run here."""
    make = shutil.which("make")
    assert make is not None
    # Not as a sub-make of `make test`: no inherited flags, no "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    done = subprocess.run(  # noqa: S603 - our own Makefile, a fixed target
        [make, "--no-print-directory", "-n", target],
        cwd=folder, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def test_make_dev_on_a_fresh_clone_installs_only_the_runtime(checkout: Path) -> None:
    """No dev tools (mypy, schemathesis, hadolint…) before the first answer: `.[embedded]` only."""
    commands = would_run(checkout, "dev")
    assert "-m venv" in commands
    assert "-e '.[embedded]'" in commands
    assert ".[dev]" not in commands
    assert commands.rstrip().endswith(".venv/bin/billing-service dev")


def test_make_dev_after_make_test_installs_nothing(checkout: Path) -> None:
    """The dev extras include the runtime, so their install counts for `make dev` too."""
    installed(checkout, DEV, RUNTIME)
    assert would_run(checkout, "dev").strip() == ".venv/bin/billing-service dev"


def test_make_test_after_make_dev_adds_the_dev_extras_to_the_same_venv(checkout: Path) -> None:
    """The venv is kept; only the dev extras are installed, and both stamps are then fresh."""
    installed(checkout, RUNTIME)
    commands = would_run(checkout, "lint")
    assert "-m venv" not in commands
    assert "-e '.[dev]'" in commands
    assert f"touch {DEV} {RUNTIME}" in commands
    assert ".[embedded]" not in commands


def test_a_changed_pyproject_makes_the_installs_stale(checkout: Path) -> None:
    """Editing the dependencies reinstalls them on the next `make dev` and `make test`."""
    installed(checkout, DEV, RUNTIME)
    earlier = time.time() - 60
    for stamp in (DEV, RUNTIME):
        os.utime(checkout / stamp, (earlier, earlier))
    (checkout / "pyproject.toml").touch()
    assert "-e '.[embedded]'" in would_run(checkout, "dev")
    assert "-e '.[dev]'" in would_run(checkout, "lint")
