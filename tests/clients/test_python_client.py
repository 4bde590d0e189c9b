"""The Python client (clients/python) against a live `billing-service serve`, sync and async alike:
every call's shape, problems raised as the error tree, retries through a proxy that fails on cue,
and the entitlement cache."""

from __future__ import annotations

import inspect
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from billing_client import (
    AsyncBillingClient,
    BillingClient,
    Conflict,
    ConnectionFailed,
    EntitlementCache,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Retries,
    Unauthorized,
    Unavailable,
)
from billing_client._async import AsyncCustomers, AsyncSubscriptions
from billing_client._core import retry_after_seconds
from billing_client._sync import Customers, Subscriptions

from tests.clients.conftest import (
    Answer,
    Drop,
    Factory,
    FaultyProxy,
    Keys,
    run,
)
from tests.conftest import APP_HOST
from tests.live_service import LiveService

# Retries as fast as the tests can make them; `Retry-After` still rules when sent.
QUICK = Retries(max_retries=3, backoff=0.01, max_backoff=0.05)


async def test_check_track_entitlements_usage_and_plans(
    live_service: LiveService, keys: Keys, make_client: Factory
) -> None:
    """The hot path: check records nothing, track counts, entitlements and the usage history
    show it, and the plans are the example catalog's."""
    billing = make_client(live_service.base, keys.usage)

    decision = await run(billing.check, "user_1", "ai_calls", 2)
    assert (decision.allowed, decision.used, decision.limit, decision.remaining) == (True, 0, 5, 5)
    tracked = await run(
        billing.track, "user_1", "ai_calls", 2, cost=Decimal("0.25"), metadata={"model": "m1"}
    )
    assert (tracked.allowed, tracked.recorded, tracked.used, tracked.remaining) == (
        True, True, 2, 3,
    )  # fmt: skip
    assert tracked.idempotency_key.startswith("bc_")

    entitlements = await run(billing.entitlements, "user_1")
    assert entitlements.plan == "free"
    ai_calls = entitlements.get("ai_calls")
    assert ai_calls is not None
    assert (ai_calls.used, ai_calls.remaining, ai_calls.cost) == (2, 3, Decimal("0.25"))
    assert ai_calls.source == "plan"
    assert entitlements.allows("ai_calls")
    assert not entitlements.allows("export_csv")

    history = await run(billing.usage, "user_1", feature="ai_calls", granularity="day")
    [bucket] = history.data
    assert (bucket.feature, bucket.used, bucket.cost) == ("ai_calls", 2, Decimal("0.25"))
    assert history.start <= datetime.now(UTC) < history.end

    denied = await run(billing.check, "user_1", "ai_calls", 4)
    assert not denied
    assert (denied.reason, denied.upgrade.plan) == ("limit_reached", "pro")

    plans = await run(billing.plans)
    assert [p.key for p in plans] == ["free", "pro", "credits", "team"]
    pro = plans[1]
    assert {p.lookup_key: p.amount for p in pro.prices} == {
        "pro_monthly": 1900,
        "pro_yearly": 19000,
    }


async def test_a_track_without_a_key_gets_a_new_one_and_a_given_key_counts_once(
    live_service: LiveService, keys: Keys, make_client: Factory
) -> None:
    """Two calls without a key are two usages; the same given key twice is one."""
    billing = make_client(live_service.base, keys.usage)
    first = await run(billing.track, "user_1", "ai_calls")
    second = await run(billing.track, "user_1", "ai_calls")
    assert first.idempotency_key != second.idempotency_key
    assert second.used == 2
    again = [await run(billing.track, "user_1", "ai_calls", idempotency_key="job-7") for _ in "ab"]
    assert [t.used for t in again] == [3, 3]
    assert (await run(billing.entitlements, "user_1")).get("ai_calls").used == 3


async def test_customers_tokens_checkout_and_portal(
    live_service: LiveService, keys: Keys, make_client: Factory
) -> None:
    """Customers are upserted and read; a token reads only its customer's entitlements;
    checkout with one idempotency key is one session; the portal opens after a checkout."""
    billing = make_client(live_service.base, keys.billing)
    usage = make_client(live_service.base, keys.usage)

    created = await run(
        billing.customers.upsert, "user_1", email="ada@example.com", name="Ada",
        metadata={"team": "core"},
    )  # fmt: skip
    assert (created.customer_id, created.email, created.metadata) == (
        "user_1", "ada@example.com", {"team": "core"},
    )  # fmt: skip
    fetched = await run(billing.customers.get, "user_1")
    assert (fetched.name, fetched.plan.key, fetched.subscription) == ("Ada", "free", None)

    token = await run(usage.customer_token, "user_1", ttl_seconds=120)
    assert token.token.startswith("bct_")
    assert token.expires_at > datetime.now(UTC) + timedelta(seconds=60)
    browser = make_client(live_service.base, token.token)
    assert (await run(browser.entitlements, "user_1")).customer_id == "user_1"
    with pytest.raises(Forbidden):
        await run(browser.check, "user_1", "ai_calls")

    urls = {"success_url": f"https://{APP_HOST}/ok", "cancel_url": f"https://{APP_HOST}/no"}
    session = await run(billing.checkout, "user_1", "pro_monthly", idempotency_key="co-1", **urls)
    assert (session.mode, session.url.startswith("https://")) == ("subscription", True)
    same = await run(billing.checkout, "user_1", "pro_monthly", idempotency_key="co-1", **urls)
    assert same.id == session.id
    portal = await run(billing.portal, "user_1", return_url=f"https://{APP_HOST}/account")
    assert portal.url.startswith("https://")


async def test_problems_are_raised_as_the_error_tree(
    live_service: LiveService, keys: Keys, make_client: Factory
) -> None:
    """404, 422 (with its fields), 401, 403 and 409 each raise their class, carrying the
    problem's type, title, detail, status and request id."""
    billing = make_client(live_service.base, keys.billing)

    with pytest.raises(NotFound) as missing:
        await run(billing.customers.get, "nobody")
    error = missing.value
    assert (error.status, error.slug, error.title) == (404, "not-found", "Not found")
    assert error.type == "urn:billing-service:problem:not-found"
    assert "nobody" in error.detail
    assert error.request_id
    assert error.request_id in str(error)

    with pytest.raises(InvalidRequest) as invalid:
        await run(billing.track, "user_1", "ai_calls", 0)
    assert invalid.value.status == 422
    assert [e.field for e in invalid.value.errors] == ["amount"]

    with pytest.raises(Unauthorized) as unknown:
        await run(make_client(live_service.base, "bsk_unknown").check, "user_1", "ai_calls")
    assert unknown.value.slug == "unauthenticated"

    with pytest.raises(Forbidden):
        await run(make_client(live_service.base, keys.usage).customers.get, "user_1")

    await run(billing.track, "user_1", "ai_calls", 1, idempotency_key="k1")
    with pytest.raises(Conflict) as reused:
        await run(billing.track, "user_1", "ai_calls", 2, idempotency_key="k1")
    assert reused.value.status == 409

    await run(billing.customers.upsert, "user_1", email="ada@example.com")
    for method, args in (
        (billing.subscription.change, ("user_1", "pro_yearly")),
        (billing.subscription.cancel, ("user_1",)),
        (billing.subscription.resume, ("user_1",)),
    ):
        with pytest.raises(Conflict) as none:
            await run(method, *args)
        assert none.value.slug == "no-active-subscription"


async def test_503_and_429_are_retried_with_the_same_key_and_counted_once(
    live_service: LiveService, keys: Keys, proxy: FaultyProxy, make_client: Factory
) -> None:
    """A 503 (Retry-After: 1), then a 429 (Retry-After: 0), then the service: the track is sent
    three times with one idempotency key, waits the second asked for, and counts once."""
    billing = make_client(proxy.url, keys.usage, retries=QUICK)
    proxy.script = [Answer(503, "1"), Answer(429, "0")]

    started = time.monotonic()
    tracked = await run(billing.track, "user_1", "ai_calls", 3)
    assert time.monotonic() - started >= 1.0
    assert (tracked.recorded, tracked.used) == (True, 3)

    sent = proxy.to("/v1/usage/track")
    assert len(sent) == 3
    assert {s.json()["idempotency_key"] for s in sent} == {tracked.idempotency_key}
    direct = make_client(live_service.base, keys.usage)
    assert (await run(direct.entitlements, "user_1")).get("ai_calls").used == 3


async def test_a_track_whose_answer_was_lost_is_resent_and_counted_once(
    live_service: LiveService, keys: Keys, proxy: FaultyProxy, make_client: Factory
) -> None:
    """The service records the track but the connection breaks before the answer: the retry
    carries the same key, gets the first answer back, and the usage is counted once."""
    billing = make_client(proxy.url, keys.usage, retries=QUICK)
    proxy.script = [Drop(after_forwarding=True)]

    tracked = await run(billing.track, "user_1", "ai_calls", 2)

    assert (tracked.recorded, tracked.used) == (True, 2)
    sent = proxy.to("/v1/usage/track")
    assert [s.json()["idempotency_key"] for s in sent] == [tracked.idempotency_key] * 2
    direct = make_client(live_service.base, keys.usage)
    assert (await run(direct.entitlements, "user_1")).get("ai_calls").used == 2


async def test_a_change_whose_answer_was_lost_is_not_resent(
    keys: Keys, proxy: FaultyProxy, make_client: Factory
) -> None:
    """A subscription change carries no idempotency key: after a failure that may have come
    after the service acted, it is raised, not sent again; one refused before sending is."""
    billing = make_client(proxy.url, keys.billing, retries=QUICK)
    proxy.script = [Drop(after_forwarding=True)]
    with pytest.raises(ConnectionFailed):
        await run(billing.subscription.cancel, "user_1")
    assert len(proxy.seen) == 1

    proxy.script = [Answer(503), Answer(503)]
    with pytest.raises(NotFound):
        await run(billing.subscription.cancel, "user_1")
    assert len(proxy.seen) == 4


async def test_retries_run_out_and_long_waits_are_not_waited(
    keys: Keys, proxy: FaultyProxy, make_client: Factory
) -> None:
    """With 2 retries, a service that keeps answering 503 is asked 3 times and the problem is
    raised; a 429 asking for longer than `max_retry_after` is raised at once."""
    billing = make_client(
        proxy.url, keys.usage, retries=Retries(max_retries=2, backoff=0.01, max_retry_after=5)
    )
    proxy.script = [Answer(503)] * 3
    with pytest.raises(Unavailable) as down:
        await run(billing.check, "user_1", "ai_calls")
    assert (down.value.status, down.value.slug, down.value.request_id) == (
        503, "service-unavailable", "req_proxy_3",
    )  # fmt: skip
    assert len(proxy.seen) == 3

    proxy.script = [Answer(429, "3600")]
    started = time.monotonic()
    with pytest.raises(RateLimited) as limited:
        await run(billing.check, "user_1", "ai_calls")
    assert time.monotonic() - started < 1
    assert limited.value.retry_after == 3600
    assert len(proxy.seen) == 4


async def test_a_service_that_cannot_be_reached_raises_connection_failed(
    keys: Keys, proxy: FaultyProxy, make_client: Factory
) -> None:
    """Connections reset before the request got through are retried, then raised."""
    billing = make_client(proxy.url, keys.usage, retries=Retries(max_retries=1, backoff=0.01))
    proxy.script = [Drop(after_forwarding=False)] * 2
    with pytest.raises(ConnectionFailed) as failed:
        await run(billing.check, "user_1", "ai_calls")
    assert failed.value.status is None
    assert len(proxy.seen) == 2


async def test_the_cache_serves_entitlements_until_the_ttl_or_a_track(
    live_service: LiveService, keys: Keys, proxy: FaultyProxy, make_client: Factory
) -> None:
    """A second read is served from memory; a track through the client, `fresh=True`, or the
    TTL running out reads the service again."""
    now = [1000.0]
    cache = EntitlementCache(ttl_seconds=30, clock=lambda: now[0])
    billing = make_client(proxy.url, keys.usage, cache=cache)
    path = "/v1/customers/user_1/entitlements"

    first = await run(billing.entitlements, "user_1")
    assert await run(billing.entitlements, "user_1") is first
    assert len(proxy.to(path)) == 1

    await run(billing.track, "user_1", "ai_calls")
    assert (await run(billing.entitlements, "user_1")).get("ai_calls").used == 1
    assert len(proxy.to(path)) == 2

    await run(billing.entitlements, "user_1", fresh=True)
    assert len(proxy.to(path)) == 3
    now[0] += 31
    await run(billing.entitlements, "user_1")
    assert len(proxy.to(path)) == 4


def test_the_sync_and_async_clients_offer_the_same_calls() -> None:
    """Every public method of one client exists on the other with the same parameters."""
    for sync_owner, async_owner in (
        (BillingClient, AsyncBillingClient),
        (Customers, AsyncCustomers),
        (Subscriptions, AsyncSubscriptions),
    ):
        sync_calls = {n: f for n, f in vars(sync_owner).items() if not n.startswith("_")}
        async_calls = {n: f for n, f in vars(async_owner).items() if not n.startswith("_")}
        assert set(sync_calls) - {"close"} == set(async_calls) - {"aclose"}
        for name, method in sync_calls.items():
            if name == "close" or not callable(method):
                continue
            assert inspect.iscoroutinefunction(async_calls[name])
            assert inspect.signature(method) == inspect.signature(async_calls[name]), name


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """`Retry-After: 7` and an HTTP date 7 s ahead both mean 7 s; garbage means none."""
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7
    assert retry_after_seconds("Wed, 01 Jan 2025 12:00:07 GMT", now) == 7
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
