"""The container image's recipe: a small build context, a pinned base, a dependency layer that
does not change with the source, and a health check the CLI really has (run here for real).

No Docker engine runs the tests, so the files are read the way Docker reads them.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from billing_service.cli import build_parser
from billing_service.config import Settings
from tests.support import billing_service, free_port, start_service

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """`.dockerignore` as (is_exception, regex) pairs, in order."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        patterns.append((exception, re.compile(_glob_to_regex(pattern))))
    return patterns


def _glob_to_regex(pattern: str) -> str:
    """Docker's pattern syntax: `**` any number of directories, `*` and `?` within one."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def excluded(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: each pattern is tried on the path
    and on every folder above it, and the last pattern that matches decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    result = False
    for exception, regex in dockerignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not exception
    return result


def copied_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions read (not `--from` stages)."""
    sources = []
    for line in DOCKERFILE.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/stripe/__init__.py",
        ".data/postgres/PG_VERSION",
        ".data/postgres/base/1/1259",
        ".git/HEAD",
        ".env",
        "tests/conftest.py",
        "billing_service/__pycache__/config.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
    ],
)
def test_the_build_context_leaves_out_local_state(path: str) -> None:
    """The venv, the embedded PostgreSQL's data, git, caches and tests never reach the builder."""
    assert excluded(path)


def test_the_build_context_holds_everything_the_dockerfile_copies() -> None:
    """Every file under each COPY source is in the context, so the image builds from it."""
    sources = copied_sources()
    assert {"pyproject.toml", "billing_service", "db", "README.md"} <= set(sources)
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files, source
        for file in files:
            assert not excluded(file.relative_to(ROOT).as_posix()), file


def test_the_base_image_is_pinned_by_digest() -> None:
    """Every image the build starts from is named by its sha256 digest, not a moving tag."""
    images = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert len(images) == 2
    for image in images:
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim@sha256:[0-9a-f]{64}", image), image


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """The dependency layer depends on pyproject.toml alone, so source edits reuse it."""
    build = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1]
    copies = [line for line in build.splitlines() if line.startswith("COPY")]
    assert copies[0] == "COPY pyproject.toml ./"
    dependencies = build.index("-r requirements.txt")
    assert build.index(copies[0]) < dependencies < min(build.index(c) for c in copies[1:])
    assert "--no-deps" in build[build.index("COPY billing_service") :]


def healthcheck_command() -> list[str]:
    found = re.search(r"HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])", DOCKERFILE)
    assert found is not None
    command: list[str] = json.loads(found[1])
    return command


def test_the_healthcheck_is_a_cli_command_not_inline_python() -> None:
    """HEALTHCHECK runs the installed `billing-service healthcheck`, which the CLI has."""
    from billing_service.cli.health import cmd_healthcheck

    program, *args = healthcheck_command()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert program in scripts
    assert build_parser().parse_args(args).handler is cmd_healthcheck
    assert "python" not in healthcheck_command()


async def test_the_healthcheck_passes_against_a_serving_process_and_fails_without_one(
    cli_env: dict[str, str],
) -> None:
    """The image's health check command exits 0 while `serve` answers, and 1 (one line) when
    nothing listens on the port."""
    _program, *args = healthcheck_command()
    port = free_port()
    env = cli_env | {"BILLING_PORT": str(port)}
    service = await start_service(env, f"http://127.0.0.1:{port}")
    try:
        healthy = await billing_service(env, *args)
    finally:
        service.terminate()
        await service.wait()
    assert healthy.code == 0, healthy.err
    down = await billing_service(env, *args)
    assert down.code == 1
    assert down.err.strip() == f"billing-service: http://127.0.0.1:{port}/healthz: ConnectError"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/healthz"),  # noqa: S104 - the image's bind address
        ("::", "http://[::1]:8000/healthz"),
        ("10.1.2.3", "http://10.1.2.3:8000/healthz"),
    ],
)
def test_the_healthcheck_asks_where_serve_listens(host: str, url: str) -> None:
    """A wildcard bind is checked on loopback; a specific address on that address."""
    from billing_service.cli.health import healthz_url

    assert healthz_url(Settings(host=host, port=8000)) == url
