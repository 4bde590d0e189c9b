"""API key service: minting, authentication rules, and the once-only bootstrap key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from billing_service.errors import ValidationFailed
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope


async def test_concurrent_bootstraps_mint_exactly_one_admin_key(pool: asyncpg.Pool) -> None:
    """Replicas starting together on an empty database create one admin key between them."""
    results = await asyncio.gather(*(api_keys.ensure_bootstrap_admin_key(pool) for _ in range(6)))
    issued = [result for result in results if result is not None]
    assert len(issued) == 1
    assert issued[0].key.scopes == frozenset({"admin"})
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 1


async def test_bootstrap_does_nothing_once_any_key_exists(pool: asyncpg.Pool) -> None:
    """A database that already has keys gets no new admin key."""
    await api_keys.create_key(pool, name="existing", scopes=[Scope.USAGE])
    assert await api_keys.ensure_bootstrap_admin_key(pool) is None


async def test_keys_are_unique_and_carry_256_random_bits(pool: asyncpg.Pool) -> None:
    """Minted keys differ and are long enough for 256 bits of base64url."""
    keys = [
        (await api_keys.create_key(pool, name=f"k{i}", scopes=[Scope.USAGE])).plaintext
        for i in range(20)
    ]
    assert len(set(keys)) == 20
    assert all(len(key) == len("bsk_") + 43 for key in keys)


async def test_expiry_is_enforced_at_authentication(pool: asyncpg.Pool) -> None:
    """A key works until its expiry and not after."""
    issued = await api_keys.create_key(
        pool, name="short", scopes=[Scope.USAGE], expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    assert await api_keys.authenticate(pool, issued.plaintext) is not None
    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", issued.key.id
    )
    assert await api_keys.authenticate(pool, issued.plaintext) is None


async def test_admin_implies_every_scope_and_others_only_their_own(pool: asyncpg.Pool) -> None:
    """`admin` passes every check; `usage` passes only checks that accept usage."""
    admin = (await api_keys.create_key(pool, name="a", scopes=[Scope.ADMIN])).key
    usage = (await api_keys.create_key(pool, name="u", scopes=[Scope.USAGE])).key
    assert api_keys.key_allows(admin, (Scope.BILLING,))
    assert api_keys.key_allows(usage, (Scope.USAGE, Scope.BILLING))
    assert not api_keys.key_allows(usage, (Scope.BILLING,))
    assert not api_keys.key_allows(usage, (Scope.ADMIN,))


async def test_invalid_key_requests_are_refused_before_storage(pool: asyncpg.Pool) -> None:
    """Blank names, no scopes, naive or past expiry: a validation error and nothing stored."""
    cases: list[dict[str, object]] = [
        {"name": " ", "scopes": [Scope.USAGE]},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": [Scope.USAGE], "expires_at": datetime(2030, 1, 1)},  # noqa: DTZ001
        {"name": "x", "scopes": [Scope.USAGE], "expires_at": datetime.now(UTC) - timedelta(days=1)},
    ]
    for case in cases:
        with pytest.raises(ValidationFailed):
            await api_keys.create_key(pool, **case)  # type: ignore[arg-type]
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 0
