"""The TypeScript client (clients/typescript): its own suite run with `node --test` against a
live service, its types held to openapi.yaml, and the README's TypeScript example run as shown."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from tests.clients.typescript_support import (
    PACKAGE,
    build_package,
    client_env,
    require_node,
    run,
)
from tests.doc_examples import ROOT, fenced_blocks
from tests.live_service import LiveService, live_service


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[LiveService]:
    require_node()
    async with live_service(database_url) as live:
        yield live


async def test_the_client_suite_passes_against_a_live_service(
    service: LiveService, settings: Settings, pool: asyncpg.Pool
) -> None:
    """`npm test` checks the generated types against openapi.yaml, builds with tsc and runs
    every Node test (calls, typed errors, retries through a fault-injecting proxy) green."""
    env = await client_env(service, settings, pool)
    tested = await run("npm", "test", env=env)
    output = tested.out + tested.err
    assert tested.code == 0, output[-6000:]
    assert "src/schema.ts matches" in output
    # The spec reporter ends with a summary: "pass 24", "fail 0", each after an info sign.
    passed = re.search(r"^\S* ?pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^\S* ?fail (\d+)$", output, re.MULTILINE)
    assert passed, output[-3000:]
    assert failed, output[-3000:]
    assert int(failed[1]) == 0
    assert int(passed[1]) >= 20, output[-3000:]


async def test_a_spec_the_generated_types_do_not_match_fails_the_check(tmp_path: Path) -> None:
    """Changing openapi.yaml without regenerating src/schema.ts fails `check-schema` (CI runs it
    in `npm test`), and the unchanged spec passes."""
    require_node()
    spec = (ROOT / "openapi.yaml").read_text(encoding="utf-8")
    changed = tmp_path / "openapi.yaml"
    changed.write_text(
        spec.replace("allowed: {type: boolean}", "allowed: {type: string}", 1), encoding="utf-8"
    )
    assert changed.read_text(encoding="utf-8") != spec
    refused = await run("node", "scripts/schema.mjs", str(changed))
    assert refused.code == 1, refused.out + refused.err
    assert "does not match" in refused.err
    accepted = await run("node", "scripts/schema.mjs")
    assert accepted.code == 0, accepted.out + accepted.err


def readme_typescript() -> str:
    """The ```ts block of the README's "Use it from your app" section."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start = text.index("## Use it from your app")
    end = text.find("\n## ", start + 1)
    blocks = [
        b
        for b in fenced_blocks(readme)
        if b.language == "ts" and start < text.index(b.text) < (end if end > 0 else len(text))
    ]
    assert len(blocks) == 1, "the section shows one TypeScript example"
    return blocks[0].text


def installed_like_an_app(folder: Path) -> None:
    """`folder` as an app with the package installed: node_modules/@billing-service/client."""
    installed = folder / "node_modules" / "@billing-service" / "client"
    installed.parent.mkdir(parents=True)
    installed.symlink_to(PACKAGE, target_is_directory=True)
    (folder / "package.json").write_text(json.dumps({"type": "module"}), encoding="utf-8")


def tsc(folder: Path, *args: str) -> list[str]:
    """The package's tsc, strict, as an ES module app with Node's types would compile."""
    return [
        "node", str(PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"),
        "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext",
        "--typeRoots", str(PACKAGE / "node_modules" / "@types"), "--types", "node",
        "--lib", "es2022,dom", "--outDir", str(folder), *args,
    ]  # fmt: skip


async def test_the_typescript_examples_of_the_docs_compile(tmp_path: Path) -> None:
    """Every ```ts block of docs/clients.md type-checks (strict) against the package
    as an app installs it, so the documented calls and shapes are the client's."""
    require_node()
    await build_package()
    installed_like_an_app(tmp_path)
    blocks = [b for b in fenced_blocks(ROOT / "docs" / "clients.md") if b.language == "ts"]
    assert len(blocks) >= 3
    names = []
    for number, block in enumerate(blocks):
        (tmp_path / f"block{number}.ts").write_text(block.text, encoding="utf-8")
        names.append(f"block{number}.ts")
    compiled = await run(*tsc(tmp_path, "--noEmit", *names), cwd=tmp_path)
    assert compiled.code == 0, compiled.out + compiled.err


async def test_the_readme_typescript_example_checks_and_tracks(
    service: LiveService, settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The README's TypeScript lines compile with tsc (strict) against the package as installed
    and, run with node, check and then track one call for the customer."""
    code = readme_typescript()
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    await build_package()
    env = await client_env(service, settings, pool)
    installed_like_an_app(tmp_path)
    (tmp_path / "example.ts").write_text(code, encoding="utf-8")
    compiled = await run(*tsc(tmp_path, "example.ts"), cwd=tmp_path)
    assert compiled.code == 0, compiled.out + compiled.err
    ran = await run("node", "example.js", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.out + ran.err
    customer = re.search(r'track\("([^"]+)"', code)
    assert customer
    async with httpx.AsyncClient(base_url=service.base) as http:
        answer = await http.get(
            f"/v1/customers/{customer[1]}/entitlements",
            headers={"Authorization": f"Bearer {env['USAGE_KEY']}"},
        )
    assert answer.status_code == 200
    ai_calls = [f for f in answer.json()["features"] if f["feature"] == "ai_calls"]
    assert ai_calls[0]["used"] == 1
