"""No page of the console, nor its source, holds a secret: API keys (the signed-in one
included) and their hashes, the session's signing secret, the Stripe key, Stripe's webhook
signing secrets, outgoing webhook secrets, or client secrets inside stored Stripe payloads."""

from __future__ import annotations

import re

import asyncpg

from billing_service.config import Settings
from billing_service.console import session as sessions
from billing_service.services import api_keys
from tests.conftest import WEBHOOK_SECRETS
from tests.console.support import (
    CLIENT_SECRET,
    console_client,
    seed,
    signed_in,
    visit_every_page,
)
from tests.stripe_fakes import FakeStripe

_SECRET_LOOKING = re.compile(
    r"bsk_[A-Za-z0-9_-]{20,}|bct_[A-Za-z0-9_-]{20,}|(?:sk|rk)_(?:test|live)_|whsec_"
    r"|[A-Za-z0-9]_secret_[A-Za-z0-9]"
)


async def test_no_page_source_holds_a_secret(
    stripe_settings: Settings, pool: asyncpg.Pool, fake_stripe: FakeStripe
) -> None:
    """Every page, with a Stripe key, webhook secrets, an endpoint secret and a payload with a
    client secret all in play, is scanned for each secret and for anything shaped like one."""
    async with console_client(stripe_settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        cookie = client.cookies[sessions.COOKIE]
        sources = await visit_every_page(client, seeded)
    assert len(sources) == 12
    secrets = [
        seeded.admin_key,
        seeded.admin_key[4:24],
        seeded.usage_key,
        api_keys.hash_key(seeded.admin_key).hex(),
        sessions.settings_secret(stripe_settings).hex(),
        cookie,
        seeded.endpoint_secret,
        seeded.endpoint_secret.removeprefix("whsec_")[:16],
        "sk_test_fake",
        *WEBHOOK_SECRETS,
        CLIENT_SECRET,
    ]
    for path, source in sources.items():
        for secret in secrets:
            assert secret not in source, f"{path} shows a secret"
        assert not _SECRET_LOOKING.findall(source), (path, _SECRET_LOOKING.findall(source))
    # The scan would have found them: the customer's page does show the customer.
    assert "ada_lovelace" in sources["/console/customers/ada_lovelace"]
