"""The TypeScript client in a real browser: a page served from another origin than the service
reads a customer's entitlements with a customer token (CORS lets it), while the same page with an
API key is refused by the browser (no CORS for keys). Playwright drives Debian's Chromium."""

from __future__ import annotations

import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from billing_service.config import Settings
from tests.clients.typescript_support import (
    PACKAGE,
    build_package,
    client_env,
    require_node,
)
from tests.live_service import LiveService, live_service
from tests.support import free_port

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (`apt-get install chromium`); .ci/run installs it
PAGE = Path(__file__).parent / "page" / "index.html"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test's output to what matters."""


@contextmanager
def static_site(folder: Path, port: int) -> Iterator[None]:
    """Serve `folder` on 127.0.0.1:`port` (another origin than the service's)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The page and the built browser entry (dist/ as `client/`), served on a port of its own:
    the page's origin, which differs from the service's."""
    require_node()
    await build_package()
    folder = tmp_path_factory.mktemp("site")
    shutil.copy(PAGE, folder / "index.html")
    shutil.copytree(PACKAGE / "dist", folder / "client")
    port = free_port()
    with static_site(folder, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def service(database_url: str, site: str) -> AsyncIterator[LiveService]:
    """The service, with the page's origin (only) in BILLING_CORS_ORIGINS."""
    async with live_service(database_url, BILLING_CORS_ORIGINS=site) as live:
        yield live


def system_chromium() -> Path:
    """Debian's Chromium, which Playwright drives instead of a browser of its own."""
    assert CHROMIUM.exists(), "install Debian's Chromium: apt-get install -y chromium"
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium from the system (Playwright's own browser download is not used)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=system_chromium())
        yield browser
        await browser.close()


async def open_page(
    browser: Browser, origin: str, service: LiveService, customer: str, credential: str
) -> tuple[dict[str, str | None], list[str], list[str]]:
    """Load the page with the credential; what it shows, its console, and what the browser
    fetched from the service."""
    page = await browser.new_page()
    console: list[str] = []
    fetched: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("request", lambda request: fetched.append(f"{request.method} {request.url}"))
    fragment = urlencode({"service": service.base, "customer": customer, "token": credential})
    await page.goto(f"{origin}/index.html#{fragment}")
    await page.wait_for_selector("body[data-entitlements][data-plans]", timeout=20_000)
    shown = {
        "entitlements": await page.get_attribute("body", "data-entitlements"),
        "plans": await page.get_attribute("body", "data-plans"),
        "plan": await page.text_content("#plan"),
        "features": await page.text_content("#features"),
        "plan_names": await page.text_content("#plans"),
        "error": await page.text_content("#error"),
    }
    await page.close()
    return shown, console, fetched


async def customer_token(service: LiveService, usage_key: str, customer: str) -> str:
    """A token for the customer, as the app's back end would get one for its page."""
    async with httpx.AsyncClient(
        base_url=service.base, headers={"Authorization": f"Bearer {usage_key}"}
    ) as http:
        tracked = await http.post(
            "/v1/usage/track",
            json={"customer_id": customer, "feature": "ai_calls", "amount": 2},
            headers={"Idempotency-Key": f"browser-{customer}"},
        )
        assert tracked.status_code == 200, tracked.text
        issued = await http.post(f"/v1/customers/{customer}/tokens", json={})
        assert issued.status_code == 201, issued.text
        token: str = issued.json()["token"]
        return token


async def test_a_page_on_another_origin_shows_entitlements_with_a_customer_token(
    service: LiveService, settings: Settings, pool: asyncpg.Pool, site: str, browser: Browser
) -> None:
    """CORS lets the page read the customer's entitlements with their token, and the public
    plans with no credential; the browser reports no CORS error."""
    env = await client_env(service, settings, pool)
    token = await customer_token(service, env["USAGE_KEY"], "browser-ada")
    shown, console, fetched = await open_page(browser, site, service, "browser-ada", token)
    assert shown["entitlements"] == "shown", shown
    assert shown["plan"] == "free"
    assert "ai_calls: 2 of 5" in (shown["features"] or "")
    assert "export_csv: off" in (shown["features"] or "")
    assert shown["plans"] == "shown"
    assert shown["plan_names"] == "FreeProAI credit packTeam"
    assert not [line for line in console if "CORS" in line], console
    assert f"GET {service.base}/v1/customers/browser-ada/entitlements" in fetched


async def test_the_same_page_with_an_api_key_is_refused_by_the_browser(
    service: LiveService, settings: Settings, pool: asyncpg.Pool, site: str, browser: Browser
) -> None:
    """An API key in the page fails with a CORS error: the service sends no CORS headers for
    keys, so the browser withholds the answer and the client reports no connection."""
    env = await client_env(service, settings, pool)
    await customer_token(service, env["USAGE_KEY"], "browser-bob")
    shown, console, _ = await open_page(browser, site, service, "browser-bob", env["USAGE_KEY"])
    assert shown["entitlements"] == "failed", shown
    assert (shown["error"] or "").startswith("ConnectionFailed: Failed to fetch"), shown
    assert [line for line in console if "blocked by CORS policy" in line], console
    # The pricing list stays public.
    assert shown["plans"] == "shown"


async def test_a_customer_token_from_an_origin_not_listed_is_refused(
    service: LiveService, settings: Settings, pool: asyncpg.Pool, site: str, browser: Browser
) -> None:
    """The same page served as http://localhost:… (an origin not in BILLING_CORS_ORIGINS)
    cannot use even a valid customer token."""
    env = await client_env(service, settings, pool)
    token = await customer_token(service, env["USAGE_KEY"], "browser-cy")
    other = site.replace("127.0.0.1", "localhost")
    shown, console, _ = await open_page(browser, other, service, "browser-cy", token)
    assert shown["entitlements"] == "failed", shown
    assert [line for line in console if "blocked by CORS policy" in line], console
