"""README's "Use it from your app" Python block, run as a reader would run it: a fresh
interpreter with the installed client, against a live service."""

from __future__ import annotations

import asyncio
import sys

import httpx

from tests.clients.conftest import Keys
from tests.doc_examples import ROOT, fenced_blocks
from tests.live_service import LiveService


async def test_the_readme_python_block_checks_and_tracks(
    live_service: LiveService, keys: Keys
) -> None:
    """The block runs without error and its one track is counted."""
    [block] = [b for b in fenced_blocks(ROOT / "README.md") if b.language == "python"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", block.text,
        env={"BILLING_URL": live_service.base, "USAGE_KEY": keys.usage},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()

    async with httpx.AsyncClient(base_url=live_service.base) as http:
        answer = await http.get(
            "/v1/customers/user_42/entitlements",
            headers={"Authorization": f"Bearer {keys.usage}"},
        )
    [ai_calls] = [f for f in answer.json()["features"] if f["feature"] == "ai_calls"]
    assert ai_calls["used"] == 1
