"""Structured logs: one line per request with its id, and secrets never written."""

from __future__ import annotations

import io

import asyncpg
import httpx
import orjson
import structlog

from billing_service.logs import REDACTED


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


def test_redaction_applies_to_exception_text(captured_logs: io.StringIO) -> None:
    """A secret inside an exception message is masked in the rendered traceback."""
    logger = structlog.get_logger("test")
    error = RuntimeError("Stripe rejected key sk_test_leaky123")
    logger.error("boom", exc_info=error)
    assert "sk_test_leaky123" not in captured_logs.getvalue()
    assert "Stripe rejected key" in captured_logs.getvalue()
