"""The test helpers: Stripe-compatible signatures and a fake Stripe that refuses surprises."""

from __future__ import annotations

import time

import httpx
import pytest
import respx
import stripe
from respx.models import AllMockedAssertionError

from tests.conftest import STRIPE_TEST_BASE
from tests.support import stripe_signature_header, with_database

SECRET = "whsec_test_secret"


def test_signature_helper_is_accepted_by_the_stripe_sdk() -> None:
    """The helper signs as Stripe does: the SDK's own verifier accepts it."""
    payload = b'{"id": "evt_1", "object": "event"}'
    header = stripe_signature_header(payload, SECRET)
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, SECRET, tolerance=300)


def test_signature_helper_with_wrong_secret_is_rejected_by_the_stripe_sdk() -> None:
    """A signature made with another secret fails the SDK's verification."""
    payload = b'{"id": "evt_1"}'
    header = stripe_signature_header(payload, "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload.decode(), header, SECRET, tolerance=300)


def test_signature_helper_honours_an_old_timestamp() -> None:
    """An explicit old timestamp is signed as given, so tolerance checks can be exercised."""
    payload = b"{}"
    header = stripe_signature_header(payload, SECRET, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.WebhookSignature.verify_header(payload.decode(), header, SECRET, tolerance=300)


async def test_stripe_client_at_configured_base_reaches_the_fake(
    stripe_mock: respx.MockRouter,
) -> None:
    """A StripeClient pointed at the test base URL is answered by the respx routes."""
    stripe_mock.get("/v1/customers/cus_123").respond(
        200, json={"id": "cus_123", "object": "customer", "email": "a@example.com"}
    )
    client = stripe.StripeClient(
        "sk_test_123",
        base_addresses={"api": STRIPE_TEST_BASE},
        http_client=stripe.HTTPXClient(),
        max_network_retries=0,
    )
    customer = await client.v1.customers.retrieve_async("cus_123")
    assert customer.email == "a@example.com"


async def test_unmocked_stripe_call_fails(stripe_mock: respx.MockRouter) -> None:
    """A Stripe call the test did not mock raises instead of silently passing."""
    async with httpx.AsyncClient(base_url=STRIPE_TEST_BASE) as http:
        with pytest.raises(AllMockedAssertionError):
            await http.get("/v1/charges")


def test_with_database_rewrites_tcp_and_socket_urls() -> None:
    """Database names are swapped in both host/port and unix-socket URLs."""
    assert with_database("postgresql://postgres@127.0.0.1:5432/postgres", "x") == (
        "postgresql://postgres@127.0.0.1:5432/x"
    )
    assert with_database("postgresql://postgres:@/postgres?host=/tmp/pg", "x") == (
        "postgresql://postgres:@/x?host=/tmp/pg"
    )
