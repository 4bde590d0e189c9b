"""Checkout and the portal against a fake Stripe: bodies sent, races, redirects, failures."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from billing_service.stripe_gateway import StripeGateway
from tests.conftest import APP_HOST
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe, stripe_error

SUCCESS = f"https://{APP_HOST}/billing/success?session={{CHECKOUT_SESSION_ID}}"
CANCEL = f"https://{APP_HOST}/billing"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def seeded(
    client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway, key: str,
    *customer_ids: str,
) -> None:  # fmt: skip
    """The example catalog, synced to the fake Stripe, and customers created over HTTP."""
    await apply(pool, gateway, example())
    for customer_id in customer_ids:
        response = await client.put(
            f"/v1/customers/{customer_id}",
            headers=bearer(key),
            json={"email": f"{customer_id}@example.com", "name": customer_id.title()},
        )
        assert response.status_code == 201, response.text


def checkout_body(customer_id: str = "user_1", price: str = "pro_monthly") -> dict[str, object]:
    return {
        "customer_id": customer_id,
        "price": price,
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
    }


async def test_subscription_checkout_sends_exactly_this_to_stripe(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A first checkout creates the Stripe customer, then a session linked to our records; Pro's
    metered price for its interval rides along without a quantity."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    response = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["mode"] == "subscription"
    assert body["url"].startswith("https://checkout.stripe.com/")
    assert set(body) == {"id", "url", "mode", "expires_at"}

    [customer_call] = fake_stripe.calls_to("POST", "/v1/customers")
    our_id = str(await pool.fetchval("SELECT id FROM customers WHERE external_id = 'user_1'"))
    assert customer_call.form == {
        "email": "user_1@example.com",
        "name": "User_1",
        "metadata[billing_customer_id]": our_id,
        "metadata[billing_customer_key]": "user_1",
    }
    assert customer_call.idempotency_key == f"customer:{our_id}:create"
    [session_call] = fake_stripe.calls_to("POST", "/v1/checkout/sessions")
    stripe_price = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_monthly' AND active"
    )
    metered_price = await pool.fetchval(
        "SELECT stripe_price_id FROM metered_prices "
        "WHERE lookup_key = 'pro:ai_calls:overage:month' AND active"
    )
    metadata = {
        "billing_customer_id": our_id,
        "billing_customer_key": "user_1",
        "billing_price_key": "pro_monthly",
    }
    assert session_call.form == {
        "mode": "subscription",
        "customer": next(iter(fake_stripe.customers)),
        "line_items[0][price]": stripe_price,
        "line_items[0][quantity]": "1",
        "line_items[1][price]": metered_price,
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
        "client_reference_id": our_id,
        **{f"metadata[{k}]": v for k, v in metadata.items()},
        **{f"subscription_data[metadata][{k}]": v for k, v in metadata.items()},
    }


async def test_one_time_price_opens_a_payment_checkout(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Credit packs check out in payment mode, with trials and promotion codes as asked."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    response = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key),
        json=checkout_body(price="ai_credits_1000") | {"allow_promotion_codes": True},
    )
    assert response.status_code == 201
    assert response.json()["mode"] == "payment"
    [call] = fake_stripe.calls_to("POST", "/v1/checkout/sessions")
    assert call.form["mode"] == "payment"
    assert call.form["allow_promotion_codes"] == "true"
    assert call.form["payment_intent_data[metadata][billing_price_key]"] == "ai_credits_1000"
    assert not any(k.startswith("subscription_data") for k in call.form)


async def test_trial_days_reach_stripe_for_subscriptions_only(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A requested trial becomes trial_period_days; a trial on a one-time price is a 422."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    ok = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key),
        json=checkout_body() | {"trial_days": 14},
    )  # fmt: skip
    assert ok.status_code == 201
    assert fake_stripe.calls[-1].form["subscription_data[trial_period_days]"] == "14"
    refused = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key),
        json=checkout_body(price="ai_credits_1000") | {"trial_days": 14},
    )  # fmt: skip
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "trial_days"


async def test_concurrent_first_checkouts_create_one_stripe_customer(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """20 simultaneous first checkouts for one new customer: one Stripe customer, used by all."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    responses = await asyncio.gather(
        *(
            stripe_client.post(
                "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
            )
            for _ in range(20)
        )
    )
    assert [r.status_code for r in responses] == [201] * 20
    assert len(fake_stripe.customers) == 1
    [stripe_customer] = fake_stripe.customers
    assert {s["customer"] for s in fake_stripe.sessions.values()} == {stripe_customer}
    assert len(fake_stripe.sessions) == 20
    assert (
        await pool.fetchval("SELECT stripe_customer_id FROM customers WHERE external_id = 'user_1'")
        == stripe_customer
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.net/welcome",
        f"http://{APP_HOST}/welcome",
        f"https://{APP_HOST}@evil.example.net/",
        f"https://user:pass@{APP_HOST}/",
        f"https://evil.example.net\\@{APP_HOST}/",
        f"https:\\\\{APP_HOST}/",
        f"//{APP_HOST}/welcome",
        f"/{APP_HOST}/welcome",
        "javascript:alert(document.cookie)",
        f"JAVASCRIPT://{APP_HOST}/%0aalert(1)",
        f"https://{APP_HOST}.evil.example.net/",
        f"https://evil.example.net/{APP_HOST}",
        f"https://{APP_HOST}/\nLocation: https://evil.example.net",
        f"https:/{APP_HOST}/",
        "https://\u0430pp.example.com/",  # a Cyrillic look-alike of the allowed host
        f"https://{APP_HOST}:99999/",
        f"data:text/html,<script>location='https://{APP_HOST}'</script>",
    ],
)
async def test_redirect_url_attacks_are_422_without_any_stripe_call(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    url: str,
) -> None:
    """Every return URL that is not plainly https on an allowed host is refused up front."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    calls_before = len(fake_stripe.calls)
    for field in ("success_url", "cancel_url"):
        response = await stripe_client.post(
            "/v1/checkout/sessions",
            headers=bearer(billing_key),
            json=checkout_body() | {field: url},
        )
        assert response.status_code == 422, (field, url)
        assert [e["field"] for e in response.json()["errors"]] == [field]
    portal = await stripe_client.post(
        "/v1/portal/sessions",
        headers=bearer(billing_key),
        json={"customer_id": "user_1", "return_url": url},
    )
    assert portal.status_code == 422
    assert len(fake_stripe.calls) == calls_before


async def test_allowed_host_with_path_query_and_port_is_accepted(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    billing_key: str,
) -> None:
    """Ordinary return URLs on the allowed host pass, whatever their path or query."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    for url in (f"https://{APP_HOST}:8443/a/b?c=d#e", "https://APP.example.com/x"):
        response = await stripe_client.post(
            "/v1/checkout/sessions",
            headers=bearer(billing_key),
            json=checkout_body() | {"success_url": url},
        )
        assert response.status_code == 201, url


async def test_second_subscription_is_refused_with_a_pointer_to_change_or_portal(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """With a live subscription, another subscription checkout is a 409; credit packs are fine."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    first = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    fake_stripe.complete_checkout(first.json()["id"])
    await stripe_client.get(
        f"/v1/checkout/sessions/{first.json()['id']}", headers=bearer(billing_key)
    )
    calls_before = len(fake_stripe.calls)

    again = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key),
        json=checkout_body(price="pro_yearly"),
    )
    assert again.status_code == 409
    problem = again.json()
    assert problem["type"] == "urn:billing-service:problem:subscription-exists"
    assert "/v1/customers/user_1/subscription/change" in problem["detail"]
    assert "/v1/portal/sessions" in problem["detail"]
    assert len(fake_stripe.calls) == calls_before
    credits = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key),
        json=checkout_body(price="ai_credits_1000"),
    )
    assert credits.status_code == 201


async def test_idempotent_retry_returns_the_same_session(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Same key and body: the same session (also when sent concurrently); new body: 409."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    headers = bearer(billing_key) | {"Idempotency-Key": "order-42"}
    first = await stripe_client.post("/v1/checkout/sessions", headers=headers, json=checkout_body())
    retries = await asyncio.gather(
        *(
            stripe_client.post("/v1/checkout/sessions", headers=headers, json=checkout_body())
            for _ in range(5)
        )
    )
    assert first.status_code == 201
    assert {r.status_code for r in retries} == {201}
    assert {r.json()["id"] for r in retries} == {first.json()["id"]}
    assert len(fake_stripe.sessions) == 1

    other_body = await stripe_client.post(
        "/v1/checkout/sessions", headers=headers, json=checkout_body(price="pro_yearly")
    )
    assert other_body.status_code == 409
    assert other_body.json()["type"] == "urn:billing-service:problem:idempotency-key-reused"
    assert len(fake_stripe.sessions) == 1

    concurrent_headers = bearer(billing_key) | {"Idempotency-Key": "order-43"}
    racing = await asyncio.gather(
        *(
            stripe_client.post(
                "/v1/checkout/sessions", headers=concurrent_headers, json=checkout_body()
            )
            for _ in range(5)
        )
    )
    assert len({r.json()["id"] for r in racing}) == 1
    assert len(fake_stripe.sessions) == 2


@pytest.mark.parametrize(
    ("failure", "status", "slug"),
    [
        (stripe_error(500, "api_error"), 503, "stripe-unavailable"),
        (stripe_error(429, "rate_limit_error", "rate_limit"), 503, "stripe-unavailable"),
        (httpx.ConnectError("connection refused"), 503, "stripe-unavailable"),
        (httpx.ReadTimeout("timed out"), 503, "stripe-unavailable"),
        (stripe_error(400, "invalid_request_error", "parameter_invalid"), 502,
         "stripe-request-failed"),
        (stripe_error(401, "invalid_request_error"), 502, "stripe-request-failed"),
    ],
)  # fmt: skip
async def test_stripe_failures_map_to_clear_problems_and_persist_nothing(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    failure: httpx.Response | Exception,
    status: int,
    slug: str,
) -> None:
    """Each failure class gets its problem (503s with Retry-After); no session, no key kept."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    fake_stripe.failures["/v1/checkout/sessions"] = failure
    response = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key) | {"Idempotency-Key": "attempt-1"},
        json=checkout_body(),
    )
    assert response.status_code == status
    assert response.json()["type"] == f"urn:billing-service:problem:{slug}"
    if status == 503:
        assert int(response.headers["retry-after"]) > 0
    assert "sk_test" not in response.text
    assert await pool.fetchval("SELECT count(*) FROM checkout_sessions") == 0
    assert await pool.fetchval("SELECT count(*) FROM idempotent_requests") == 0

    fake_stripe.failures.clear()
    retry = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key) | {"Idempotency-Key": "attempt-2"},
        json=checkout_body(),
    )
    assert retry.status_code == 201


async def test_completed_checkout_syncs_the_customer_without_waiting_for_a_webhook(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """The success page's GET sees the paid plan at once."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    created = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    session_id = created.json()["id"]
    open_view = await stripe_client.get(
        f"/v1/checkout/sessions/{session_id}", headers=bearer(billing_key)
    )
    assert open_view.json()["status"] == "open"
    assert open_view.json()["customer"]["plan"]["key"] == "free"

    fake_stripe.complete_checkout(session_id)
    done = await stripe_client.get(
        f"/v1/checkout/sessions/{session_id}", headers=bearer(billing_key)
    )
    body = done.json()
    assert (body["status"], body["payment_status"]) == ("complete", "paid")
    assert body["customer"]["plan"]["key"] == "pro"
    assert body["customer"]["subscription"]["status"] == "active"
    assert body["customer"]["subscription"]["price"] == "pro_monthly"

    missing = await stripe_client.get(
        "/v1/checkout/sessions/cs_unknown", headers=bearer(billing_key)
    )
    assert missing.status_code == 404


async def test_portal_session_needs_a_billing_account(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Before any checkout: 409; after one: a portal URL for the customer's Stripe account."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    body = {"customer_id": "user_1", "return_url": CANCEL}
    early = await stripe_client.post("/v1/portal/sessions", headers=bearer(billing_key), json=body)
    assert early.status_code == 409
    assert early.json()["type"] == "urn:billing-service:problem:no-billing-account"

    await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    portal = await stripe_client.post("/v1/portal/sessions", headers=bearer(billing_key), json=body)
    assert portal.status_code == 201
    assert portal.json()["url"].startswith("https://billing.stripe.com/")
    [call] = fake_stripe.calls_to("POST", "/v1/billing_portal/sessions")
    assert call.form == {"customer": next(iter(fake_stripe.customers)), "return_url": CANCEL}


async def test_stripe_backed_routes_without_a_stripe_key_are_503(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """With no Stripe key, checkout, portal and plan changes answer stripe-not-configured."""
    await apply(pool, None, example())
    await client.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json={"email": "a@example.com"}
    )
    for path, body in (
        ("/v1/checkout/sessions", checkout_body()),
        ("/v1/portal/sessions", {"customer_id": "user_1", "return_url": CANCEL}),
        ("/v1/customers/user_1/subscription/change", {"price": "pro_yearly"}),
        ("/v1/customers/user_1/subscription/cancel", {"at_period_end": True}),
    ):
        response = await client.post(path, headers=bearer(billing_key), json=body)
        assert response.status_code == 503, path
        assert response.json()["type"] == "urn:billing-service:problem:stripe-not-configured"


async def test_checkout_for_unknown_customer_or_price(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """An unknown customer is a 404 and an unknown price a 422, before any Stripe call."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    calls_before = len(fake_stripe.calls)
    nobody = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body("ghost")
    )
    assert nobody.status_code == 404
    no_price = await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key),
        json=checkout_body(price="platinum"),
    )  # fmt: skip
    assert no_price.status_code == 422
    assert no_price.json()["errors"][0]["field"] == "price"
    assert len(fake_stripe.calls) == calls_before
