"""Console sign-in: an admin key becomes a signed session cookie with safe flags and an expiry;
forged, expired and revoked sessions, other keys' scopes, and forms without the session's CSRF
token are all refused; the console is off unless enabled outside development."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

import asyncpg
import httpx
import pytest

from billing_service.config import Environment, Settings
from billing_service.console import session as sessions
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from tests.conftest import app_client, issue_key
from tests.console.support import (
    FAILED_EVENT,
    console_client,
    csrf_of,
    seed,
    sign_in,
)


def set_cookie(response: httpx.Response, name: str) -> SimpleCookie:
    """The response's Set-Cookie header for `name`, parsed."""
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


async def test_an_admin_key_signs_in_to_a_signed_httponly_secure_strict_cookie(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The sign-in answers 303 to the overview with a cookie that is HttpOnly, Secure (outside
    development), SameSite=Strict, scoped to /console, expiring with the session, and holds
    neither the key nor its hash; with it the overview answers 200."""
    key = await issue_key(pool, Scope.ADMIN)
    async with console_client(settings) as client:
        signed = await sign_in(client, key)
        assert signed.status_code == 303, signed.text
        assert signed.headers["location"] == "/console"
        cookie = set_cookie(signed, sessions.COOKIE)[sessions.COOKIE]
        assert cookie["httponly"] is True
        assert cookie["secure"] is True
        assert cookie["samesite"] == "strict"
        assert cookie["path"] == "/console"
        assert cookie["max-age"] == str(settings.console_session_minutes * 60)
        assert key not in cookie.value
        assert key[4:20] not in cookie.value
        assert api_keys.hash_key(key).hex() not in cookie.value
        overview = await client.get("/console")
    assert overview.status_code == 200, overview.text
    assert "Overview" in overview.text
    assert overview.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in overview.headers["content-security-policy"]


async def test_in_development_the_cookie_is_not_secure(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """`make dev` serves plain http on localhost, where a Secure cookie would never be sent
    back: only there is the flag left off."""
    key = await issue_key(pool, Scope.ADMIN)
    async with console_client(settings, env=Environment.DEVELOPMENT) as client:
        signed = await sign_in(client, key)
    cookie = set_cookie(signed, sessions.COOKIE)[sessions.COOKIE]
    assert signed.status_code == 303
    assert cookie["secure"] == ""
    assert cookie["httponly"] is True


async def test_a_request_without_the_cookie_gets_the_sign_in_page(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Every page sends a browser without a session to the sign-in form; an action without
    one is refused."""
    async with console_client(settings) as client:
        for path in ("/console", "/console/customers", "/console/events", "/console/catalog"):
            response = await client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/console/sign-in"
        page = await client.get("/console/sign-in")
        assert page.status_code == 200
        assert 'name="key"' in page.text
        action = await client.post("/console/events/replay-failed", data={"csrf": "x"})
    assert action.status_code == 403


async def test_a_forged_or_tampered_cookie_is_refused(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """A cookie re-signed for another admin key's id, one with its expiry pushed out, and one
    made up whole are each treated as no session."""
    key = await issue_key(pool, Scope.ADMIN)
    other = await api_keys.create_key(pool, name="other", scopes=[Scope.ADMIN])
    async with console_client(settings) as client:
        signed = await sign_in(client, key)
        value = set_cookie(signed, sessions.COOKIE)[sessions.COOKIE].value
        _v, key_id, expires, nonce, mac = value.split(".")
        forgeries = [
            f"v1.{other.key.id.hex}.{expires}.{nonce}.{mac}",
            f"v1.{key_id}.{int(expires) + 86_400}.{nonce}.{mac}",
            f"v1.{key_id}.{expires}.{nonce}.{'A' * 43}",
            "admin=true",
        ]
        for forged in forgeries:
            client.cookies.clear()
            client.cookies.set(sessions.COOKIE, forged, domain="billing.test", path="/console")
            response = await client.get("/console")
            assert response.status_code == 303, forged
            assert response.headers["location"] == "/console/sign-in"


async def test_an_expired_session_and_a_revoked_key_end_the_session(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """A session signed correctly but past its expiry is refused, and so is a current one once
    its key is revoked."""
    issued = await api_keys.create_key(pool, name="operator", scopes=[Scope.ADMIN])
    found = await api_keys.usable_key_and_hash(pool, issued.key.id)
    assert found is not None
    lifetime = settings.console_session_minutes * 60
    expired = sessions.cookie_value(settings, *found, now=time.time() - lifetime - 1)
    current = sessions.cookie_value(settings, *found, now=time.time())
    async with console_client(settings) as client:
        client.cookies.set(sessions.COOKIE, expired, domain="billing.test", path="/console")
        assert (await client.get("/console")).status_code == 303
        client.cookies.set(sessions.COOKIE, current, domain="billing.test", path="/console")
        assert (await client.get("/console")).status_code == 200
        await api_keys.revoke_key(pool, issued.key.id)
        after = await client.get("/console")
    assert after.status_code == 303


@pytest.mark.parametrize("scope", [Scope.USAGE, Scope.BILLING])
async def test_a_key_without_the_admin_scope_cannot_sign_in(
    settings: Settings, pool: asyncpg.Pool, scope: Scope
) -> None:
    """A valid usage or billing key is refused (403) and gets no session cookie."""
    key = await issue_key(pool, scope)
    async with console_client(settings) as client:
        refused = await sign_in(client, key)
        assert refused.status_code == 403
        assert "Only an admin key can sign in" in refused.text
        assert sessions.COOKIE not in client.cookies
        assert (await client.get("/console")).status_code == 303


async def test_sign_in_attempts_go_through_the_failed_authentication_limit(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Wrong keys are 401 until the address's allowance is used up, then 429; the API's own
    allowance is the same one."""
    async with console_client(settings, auth_failures_per_minute=3) as client:
        statuses = [(await sign_in(client, "bsk_" + "x" * 43)).status_code for _ in range(4)]
        api = await client.get("/v1/api-keys", headers={"Authorization": "Bearer bsk_nope"})
    assert statuses == [401, 401, 401, 429]
    assert api.status_code == 429


async def test_forms_with_a_forged_or_missing_csrf_token_are_refused(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """A signed-in session's action with another token, or none, is refused (403) and does
    nothing; the sign-in form without its own cookie's token is refused too."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        assert (await sign_in(client, seeded.admin_key)).status_code == 303
        forged = await client.post("/console/events/replay-failed", data={"csrf": "A" * 43})
        missing = await client.post("/console/events/replay-failed", data={})
        status = await pool.fetchval(
            "SELECT status FROM stripe_events WHERE stripe_event_id = $1", FAILED_EVENT
        )
    assert (forged.status_code, missing.status_code) == (403, 403)
    assert "security token" in forged.text
    assert status == "failed"
    async with console_client(settings) as fresh:
        page = await fresh.get("/console/sign-in")
        fresh.cookies.clear()
        no_cookie = await fresh.post(
            "/console/sign-in", data={"csrf": csrf_of(page.text), "key": seeded.admin_key}
        )
    assert no_cookie.status_code == 403
    assert sessions.COOKIE not in fresh.cookies


async def test_signing_out_clears_the_cookie(settings: Settings, pool: asyncpg.Pool) -> None:
    """Sign-out (a form with the CSRF token) expires the cookie and goes to the sign-in page."""
    key = await issue_key(pool, Scope.ADMIN)
    async with console_client(settings) as client:
        await sign_in(client, key)
        overview = await client.get("/console")
        out = await client.post("/console/sign-out", data={"csrf": csrf_of(overview.text)})
        assert out.status_code == 303
        assert out.headers["location"] == "/console/sign-in"
        assert set_cookie(out, sessions.COOKIE)[sessions.COOKIE]["max-age"] == "0"
        assert (await client.get("/console")).status_code == 303


async def test_the_console_is_off_outside_development_unless_enabled(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """In test and production the console is not served unless BILLING_CONSOLE_ENABLED is set;
    in development it is on."""
    assert settings.model_copy(update={"env": Environment.DEVELOPMENT}).console_on
    assert not settings.model_copy(update={"env": Environment.PRODUCTION}).console_on
    assert settings.model_copy(
        update={"env": Environment.PRODUCTION, "console_enabled": True}
    ).console_on
    async with app_client(settings) as client:
        response = await client.get("/console/sign-in")
    assert response.status_code == 404


async def test_a_correctly_signed_session_of_a_non_admin_key_is_refused(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Even a session signed with the real secret for a usage key opens no page and runs no
    action: every request checks that its key still holds the admin scope."""
    issued = await api_keys.create_key(pool, name="svc", scopes=[Scope.USAGE])
    found = await api_keys.usable_key_and_hash(pool, issued.key.id)
    assert found is not None
    value = sessions.cookie_value(settings, *found, now=time.time())
    async with console_client(settings) as client:
        client.cookies.set(sessions.COOKIE, value, domain="billing.test", path="/console")
        page = await client.get("/console/events")
        action = await client.post("/console/events/replay-failed", data={"csrf": "x" * 43})
    assert page.status_code == 303
    assert action.status_code == 403
