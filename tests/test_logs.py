"""Structured logs: one line per request with its id; secrets and personal data never written."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import asyncpg
import httpx
import orjson
import structlog

from billing_service.config import Settings
from billing_service.console import session as sessions
from billing_service.logs import QUIET_LOGGERS, REDACTED, configure_logging
from billing_service.services import maintenance
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import PII_CUSTOMER, PII_METADATA, PII_RENAMED, log_leaks
from tests.console.support import (
    CLIENT_SECRET,
    FAILED_EVENT,
    console_client,
    csrf_of,
    seed,
    sign_in,
    signed_in,
    visit_every_page,
)
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.routes.test_webhooks import drain, post_event
from tests.stripe_fakes import FakeStripe, stripe_event


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_api_keys_sent_in_headers_never_reach_the_logs(
    captured_logs: io.StringIO, client: httpx.AsyncClient, admin_key: str, pool: asyncpg.Pool
) -> None:
    """Valid and invalid keys in Authorization, and keys minted in a response, are not logged."""
    await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {admin_key}"})
    bogus = "bsk_" + "Q" * 43
    await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {bogus}"})
    created = await client.post(
        "/v1/api-keys",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"name": "svc", "scopes": ["usage"]},
    )
    minted = created.json()["key"]

    output = captured_logs.getvalue()
    requests = [line for line in _lines(captured_logs) if line["event"] == "http.request"]
    assert [line["status"] for line in requests] == [200, 401, 201]
    admin_id = await pool.fetchval("SELECT id::text FROM api_keys WHERE name = 'test'")
    assert requests[0]["key_id"] == admin_id  # who called is logged by id, never by secret
    assert "key_id" not in requests[1]
    for secret in (admin_key, bogus, minted, admin_key[4:20]):
        assert secret not in output


async def test_each_request_logs_one_summary_line_with_its_request_id(
    captured_logs: io.StringIO, client: httpx.AsyncClient
) -> None:
    """The summary line carries the request id, route template, status and duration."""
    await client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    [line] = [line for line in _lines(captured_logs) if line["event"] == "http.request"]
    assert line["request_id"] == "trace-42"
    assert line["route"] == "/healthz"
    assert line["status"] == 200
    assert line["level"] == "info"
    assert isinstance(line["duration_ms"], float)


def test_redaction_masks_secret_fields_and_secret_looking_values(
    captured_logs: io.StringIO,
) -> None:
    """Secret-named fields are masked whole; Stripe keys, signing secrets and tokens anywhere."""
    logger = structlog.get_logger("test")
    logger.info(
        "probe",
        authorization="Bearer bsk_abcdefabcdef",
        stripe_secret_key="sk_test_51Habc",
        note="retrying with sk_live_4eC39HqLyjWDarjtT1zdp7dc and whsec_abc123",
        nested={"password": "hunter2", "list": ["rk_test_xyz", "fine"]},
        dsn="postgresql://app:s3cret@db:5432/billing",
        amount=1900,
    )
    [line] = _lines(captured_logs)
    output = captured_logs.getvalue()
    for secret in (
        "bsk_abcdefabcdef",
        "sk_test_51Habc",
        "sk_live_4eC39",
        "whsec_abc123",
        "hunter2",
        "rk_test_xyz",
        "s3cret",
    ):
        assert secret not in output
    assert line["authorization"] == REDACTED
    assert line["nested"] == {"password": REDACTED, "list": [REDACTED, "fine"]}
    assert line["amount"] == 1900
    assert "retrying with" in str(line["note"])


def test_stripe_client_secrets_are_masked_but_names_that_mention_secrets_are_not(
    captured_logs: io.StringIO,
) -> None:
    """A payment or setup intent's client secret anywhere in a value is masked (the console
    shows stored payloads through the same masking); text that merely names a secret stays."""
    structlog.get_logger("test").info(
        "probe", note="confirm with pi_3Abc_secret_Xyz9", setup="seti_1Q_secret_Z",
        hint="stripe_secret_key is unset",
    )  # fmt: skip
    [line] = _lines(captured_logs)
    assert line["note"] == "confirm with " + REDACTED
    assert line["setup"] == REDACTED
    assert line["hint"] == "stripe_secret_key is unset"


def test_redaction_applies_to_exception_text(captured_logs: io.StringIO) -> None:
    """A secret inside an exception message is masked in the rendered traceback."""
    logger = structlog.get_logger("test")
    error = RuntimeError("Stripe rejected key sk_test_leaky123")
    logger.error("boom", exc_info=error)
    assert "sk_test_leaky123" not in captured_logs.getvalue()
    assert "Stripe rejected key" in captured_logs.getvalue()


def test_the_log_scan_catches_planted_secrets_and_personal_data(
    captured_logs: io.StringIO,
) -> None:
    """The suite-wide scan is not vacuous: each kind of value it guards, planted in a real log
    line (also JSON-escaped or form-encoded, as libraries write them), is found."""
    assert log_leaks(captured_logs.getvalue()) == []
    logger = structlog.get_logger("test")
    logger.info("planted", note="sk_test_fake")  # redacted by the processor: not a leak
    assert log_leaks(captured_logs.getvalue()) == []
    planted = {
        "name": str(PII_CUSTOMER["name"]),
        "escaped": json.dumps(PII_CUSTOMER["name"]),  # "Zo\u00eb Quillfeather-…"
        "form": urlencode({"email": PII_CUSTOMER["email"]}),  # zoe.quillfeather%40pii-canary…
        "metadata": PII_METADATA["favourite_colour"],
        "body": '{"object": "event", "pending_webhooks": 1}',
    }
    for field, value in planted.items():
        stream = io.StringIO()
        configure_logging("debug", "json", stream=stream)
        logging.getLogger("some.library").debug("payload %s", value)
        structlog.get_logger("test").info("planted", **{field: value})
        assert log_leaks(stream.getvalue()), f"the scan missed a planted {field}"


async def walk_customer_through_stripe(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    key: str,
) -> None:
    """The customer with personal data goes everywhere it can: created, sent to Stripe at
    checkout, renamed (a Stripe update), mirrored back from Stripe, sent a failed invoice."""
    await seeded(client, pool, gateway, key)
    created = await client.put("/v1/customers/pii_1", headers=bearer(key), json=PII_CUSTOMER)
    assert created.status_code == 201, created.text
    opened = await client.post(
        "/v1/checkout/sessions", headers=bearer(key), json=checkout_body("pii_1")
    )
    assert opened.status_code == 201, opened.text
    renamed = await client.put(
        "/v1/customers/pii_1", headers=bearer(key), json=PII_CUSTOMER | PII_RENAMED
    )
    assert renamed.status_code == 200, renamed.text
    [stripe_customer] = fake_stripe.customers.values()
    await post_event(client, stripe_event("customer.updated", stripe_customer))
    invoice = fake_stripe.add_invoice(stripe_customer["id"])
    invoice.update(customer_email=PII_RENAMED["email"], customer_name=PII_RENAMED["name"])
    await post_event(client, stripe_event("invoice.payment_failed", invoice))
    await drain(pool, gateway)
    assert await pool.fetchval("SELECT count(*) FROM email_deliveries") == 1
    viewed = await client.get("/v1/customers/pii_1", headers=bearer(key))
    assert viewed.json()["name"] == PII_RENAMED["name"]


async def test_customer_data_never_reaches_the_logs_at_debug_level(
    captured_logs: io.StringIO,
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """With the service logging at debug, Stripe calls, webhooks and emails of a customer leave
    no email, name or metadata value in any line (the SDK's and httpx's debug output included:
    those libraries are held at warnings)."""
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    await walk_customer_through_stripe(stripe_client, pool, gateway, fake_stripe, billing_key)

    lines = _lines(captured_logs)
    assert [line for line in lines if line["event"] == "stripe.request"]  # Stripe was called
    assert log_leaks(captured_logs.getvalue()) == []
    for name in QUIET_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING


async def test_customer_data_never_reaches_the_suite_logs(
    suite_logs: io.StringIO,
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """At the production level (info) the same walk leaves the suite-wide capture clean; the
    scan at the end of the session guards every other test the same way."""
    already = len(suite_logs.getvalue())
    await walk_customer_through_stripe(stripe_client, pool, gateway, fake_stripe, billing_key)
    written = suite_logs.getvalue()[already:]
    assert '"event":"stripe.request"' in written
    assert log_leaks(written) == []


def test_token_counts_stay_readable_and_token_values_are_masked(
    captured_logs: io.StringIO,
) -> None:
    """Redaction follows values: a count of tokens is shown, text under a token-named field
    and secret-named fields are masked."""
    structlog.get_logger("test").info(
        "probe", customer_tokens=3, refresh_token="opaque-abc123", access_token=None,
        cookie=7, api_key=12345, expired_tokens={"deleted": 2},
    )  # fmt: skip
    [line] = _lines(captured_logs)
    assert line["customer_tokens"] == 3
    assert line["expired_tokens"] == {"deleted": 2}
    assert line["access_token"] is None
    assert (line["refresh_token"], line["cookie"], line["api_key"]) == (REDACTED,) * 3


async def test_the_prune_job_logs_how_many_customer_tokens_it_deleted(
    captured_logs: io.StringIO, pool: asyncpg.Pool
) -> None:
    """prune.finished shows the number of expired customer tokens deleted, not [REDACTED]."""
    await maintenance.prune(pool, retention_days=90)
    [line] = [line for line in _lines(captured_logs) if line["event"] == "prune.finished"]
    assert line["customer_tokens"] == 0


async def test_the_summary_line_redacts_a_secret_in_the_path_or_the_request_id(
    captured_logs: io.StringIO, client: httpx.AsyncClient
) -> None:
    """The request line is written without the processor chain, yet a secret-looking path or
    caller-chosen request id is masked in it just as in any other line."""
    await client.get("/v1/plans/sk_live_pathleak123", headers={"X-Request-ID": "bsk_idleak456"})
    [line] = [line for line in _lines(captured_logs) if line["event"] == "http.request"]
    output = captured_logs.getvalue()
    assert "sk_live_pathleak123" not in output
    assert "bsk_idleak456" not in output
    assert line["path"] == "/v1/plans/" + REDACTED
    assert line["request_id"] == REDACTED
    assert line["route"] == "/v1/plans/{key}"
    assert line["status"] == 401


async def test_the_summary_line_has_the_fields_and_order_of_the_processor_chain(
    captured_logs: io.StringIO, client: httpx.AsyncClient, admin_key: str
) -> None:
    """Written directly, the line still reads as structlog renders it: the event's own fields,
    then the bound context (request id, key id), then the level and an ISO UTC timestamp."""
    await client.get(
        "/v1/api-keys",
        headers={"Authorization": f"Bearer {admin_key}", "X-Request-ID": "trace-order"},
    )
    [line] = [line for line in _lines(captured_logs) if line["event"] == "http.request"]
    keys = list(line)
    assert keys[:6] == ["event", "method", "path", "route", "status", "duration_ms"]
    assert set(keys[6:8]) == {"request_id", "key_id"}  # in the context's own order
    assert keys[8:] == ["level", "timestamp"]
    assert line["request_id"] == "trace-order"
    timestamp = str(line["timestamp"])
    assert timestamp.endswith("Z")
    assert datetime.fromisoformat(timestamp).tzinfo is not None
    assert abs(datetime.fromisoformat(timestamp) - datetime.now(UTC)) < timedelta(minutes=1)


async def test_no_summary_line_is_written_when_the_level_drops_info(
    client: httpx.AsyncClient,
) -> None:
    """At `warning`, requests write nothing; in the console format the line is still there."""
    quiet = io.StringIO()
    configure_logging("warning", "json", stream=quiet)
    await client.get("/healthz")
    assert quiet.getvalue() == ""
    console = io.StringIO()
    configure_logging("info", "console", stream=console)
    await client.get("/healthz", headers={"X-Request-ID": "console-7"})
    assert "http.request" in console.getvalue()
    assert "console-7" in console.getvalue()


async def test_the_console_leaves_no_secret_or_customer_data_in_the_logs(
    captured_logs: io.StringIO, settings: Settings, pool: asyncpg.Pool
) -> None:
    """Signing in to the console (with a wrong key, a usage key and the admin key), reading
    every page and acting logs one line per request by route and key id, and never a key,
    the session cookie, a form's fields, a payload's client secret or customer data."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await client.put(
            "/v1/customers/pii_console", headers=bearer(seeded.admin_key), json=PII_CUSTOMER
        )
        await sign_in(client, "bsk_" + "W" * 43)
        await sign_in(client, seeded.usage_key)
        await signed_in(client, seeded.admin_key)
        sources = await visit_every_page(client, seeded)
        await client.get("/console/customers/pii_console")
        await client.get("/console/customers", params={"q": "zoe.quillfeather@pii"})
        token = csrf_of(sources["/console"])
        await client.post(
            "/console/customers/pii_console/credits",
            data={"csrf": token, "feature": "ai_calls", "amount": "5", "reason": "pii-canary"},
        )
        await client.post(f"/console/events/{FAILED_EVENT}/replay", data={"csrf": token})
        cookie = client.cookies[sessions.COOKIE]
    output = captured_logs.getvalue()
    routes = {
        line.get("route") for line in _lines(captured_logs) if line["event"] == "http.request"
    }
    assert {
        "/console/sign-in",
        "/console/customers/{customer_id}",
        "/console/events/{event_id}",
    } <= routes
    assert log_leaks(output) == []
    for secret in (seeded.admin_key, seeded.usage_key, cookie, token, CLIENT_SECRET):
        assert secret not in output
    signed = [line for line in _lines(captured_logs) if line["event"] == "console.signed_in"]
    assert len(signed) == 1
