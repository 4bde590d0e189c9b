"""Two `billing-service serve` processes on one database, as two replicas behind a load
balancer: a session signed in on one is valid on the other (the signing secret is derived from
the shared settings), and revoking the key through either ends it on both."""

from __future__ import annotations

import re

import asyncpg
import httpx

from billing_service.console import session as sessions
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.live_service import live_service
from tests.routes.test_checkout import bearer


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    """The session cookie's value (the cookies are Secure: carried by hand over http)."""
    form = await http.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    paired = form.cookies[sessions.SIGN_IN_COOKIE]
    http.cookies.clear()
    signed = await http.post(
        "/console/sign-in",
        data={"csrf": token[1], "key": key},
        headers={"Cookie": f"{sessions.SIGN_IN_COOKIE}={paired}"},
    )
    assert signed.status_code == 303, signed.text
    return signed.cookies[sessions.COOKIE]


async def test_a_session_works_on_every_replica_and_a_revocation_ends_it_on_all(
    database_url: str, pool: asyncpg.Pool
) -> None:
    """Signed in on A, the cookie opens the overview on B; once the key is revoked through A's
    API, neither replica accepts the session."""
    key = await issue_key(pool, Scope.ADMIN)
    async with (
        live_service(database_url, BILLING_CONSOLE_ENABLED="true") as a,
        live_service(database_url, BILLING_CONSOLE_ENABLED="true") as b,
        httpx.AsyncClient(base_url=a.base) as on_a,
        httpx.AsyncClient(base_url=b.base) as on_b,
    ):
        cookie = {"Cookie": f"{sessions.COOKIE}={await sign_in(on_a, key)}"}
        on_a.cookies.clear()
        assert (await on_b.get("/console", headers=cookie)).status_code == 200
        assert (await on_a.get("/console", headers=cookie)).status_code == 200
        key_id = await pool.fetchval("SELECT id FROM api_keys")
        revoked = await on_a.delete(f"/v1/api-keys/{key_id}", headers=bearer(key))
        assert revoked.status_code == 200, revoked.text
        for replica in (on_a, on_b):
            after = await replica.get("/console", headers=cookie)
            assert after.status_code == 303
            assert after.headers["location"] == "/console/sign-in"
