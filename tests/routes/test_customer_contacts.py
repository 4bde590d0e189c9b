"""Contact changes reach the Stripe customer whatever they hold: names and emails outside ASCII,
line breaks. Stripe idempotency keys stay ASCII, bounded and free of the customer's data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import APP_HOST, app_client
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.stripe_fakes import FakeStripe
from tests.stripe_server import StripeServer, sync_example_catalog

CHANGES = {
    "accented name": {"name": "José Ñúñez"},
    "international email": {"email": "jörg@exämple.de"},
    "name with a line break": {"name": "Ada\r\nX-Injected: yes"},
}
ORIGINAL = {"email": "user_1@example.com", "name": "User_1"}


def assert_safe_key(key: str | None, *values: str) -> None:
    """An idempotency key Stripe accepts in a header that reveals none of `values`."""
    assert key is not None
    assert key.isascii()
    assert key.isprintable()
    assert len(key) <= 255
    for value in values:
        for part in value.replace("@", " ").split():
            assert part not in key


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
async def test_any_contact_change_reaches_stripe_under_a_safe_key(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    change: dict[str, str],
) -> None:
    """The change is stored and sent to Stripe under a key without the values; switching back
    and forth sends every switch (no key is reused for a different change)."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    changed = ORIGINAL | change

    for body in (changed, ORIGINAL, changed):
        response = await stripe_client.put(
            "/v1/customers/user_1", headers=bearer(billing_key), json=body
        )
        assert response.status_code == 200, response.text
    view = response.json()

    updates = fake_stripe.calls_to("POST", "/v1/customers/")
    assert [u.form for u in updates] == [
        {"email": view["email"], "name": view["name"]},
        ORIGINAL,
        {"email": view["email"], "name": view["name"]},
    ]
    assert len({u.idempotency_key for u in updates}) == 3
    for update in updates:
        assert_safe_key(update.idempotency_key, *change.values())
    [stripe_customer] = fake_stripe.customers.values()
    assert (stripe_customer["email"], stripe_customer["name"]) == (view["email"], view["name"])


@pytest.fixture
async def socket_service(
    settings: Settings, stripe_http: StripeServer, pool: asyncpg.Pool
) -> AsyncIterator[httpx.AsyncClient]:
    """The app talking to the fake Stripe over real HTTP, where header encoding is enforced."""
    over_http = settings.model_copy(
        update={
            "stripe_secret_key": SecretStr("sk_test_fake"),
            "stripe_api_base": stripe_http.url,
            "stripe_max_network_retries": 0,
            "allowed_redirect_hosts": [APP_HOST],
            "worker_enabled": False,
        }
    )
    await sync_example_catalog(pool, over_http)
    async with app_client(over_http) as client:
        yield client


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
async def test_contact_changes_travel_over_real_http(
    socket_service: httpx.AsyncClient,
    stripe_http: StripeServer,
    billing_key: str,
    change: dict[str, str],
) -> None:
    """Over a real socket (where a header must be ASCII without line breaks) the change is
    answered 200 and Stripe's customer has it, instead of a 503 on every attempt."""
    created = await socket_service.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json=ORIGINAL
    )
    assert created.status_code == 201
    opened = await socket_service.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert opened.status_code == 201, opened.text

    response = await socket_service.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json=ORIGINAL | change
    )

    assert response.status_code == 200, response.text
    [stripe_customer] = stripe_http.fake.customers.values()
    view = response.json()
    assert (stripe_customer["email"], stripe_customer["name"]) == (view["email"], view["name"])
    [update] = [a for a in stripe_http.attempts if a.path.startswith("/v1/customers/")]
    assert_safe_key(update.idempotency_key, *change.values())
