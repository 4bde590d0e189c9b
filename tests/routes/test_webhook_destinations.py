"""Where outgoing webhooks may go: internal addresses are refused when an endpoint is registered
and again after DNS at every delivery, and the delivery log never repeats what answered."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.db import outbox
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.outbound import AllowList, OutboundPolicy
from billing_service.resources import migrations_dir
from billing_service.services.outgoing_webhooks import new_secret
from tests.routes.test_checkout import bearer
from tests.routes.webhook_receivers import (
    Receiver,
    ScriptedResolver,
    app_resolving_with,
    deliver_all,
    running_receiver,
)
from tests.support import free_port

PUBLIC = "93.184.215.14"

# Each of these must be refused when an endpoint is registered, with a 422 on `url`.
INTERNAL_URLS = (
    "http://127.0.0.1/hooks",
    "http://127.0.0.1:8080/hooks",
    "http://[::1]/hooks",
    "http://0x7f.1/hooks",
    "http://2130706433/hooks",
    "http://017700000001/hooks",
    "http://127.1/hooks",
    "http://0177.0.0.1/hooks",
    "http://%31%32%37.0.0.1/hooks",
    "http://0/hooks",
    "http://0.0.0.0/hooks",
    "http://[::]/hooks",
    "http://10.0.0.5/hooks",
    "http://172.16.3.4/hooks",
    "http://192.168.1.1/hooks",
    "http://100.64.0.1/hooks",
    "http://169.254.1.1/hooks",
    "http://224.0.0.1/hooks",
    "http://255.255.255.255/hooks",
    "http://[fc00::1]/hooks",
    "http://[fd12:3456::1]/hooks",
    "http://[fe80::1]/hooks",
    "http://[ff02::1]/hooks",
    "http://[::ffff:127.0.0.1]/hooks",
    "http://[::ffff:10.0.0.1]/hooks",
    "http://[64:ff9b::a9fe:a9fe]/hooks",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://168.63.129.16/machine",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata.google.internal./computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "http://instance-data/latest/meta-data/",
    "http://localhost/hooks",
    "http://localhost:8080/hooks",
    "http://app.localhost/hooks",
    "https://user:secret@hooks.example.com/billing",
    "https://user@hooks.example.com/billing",
    "ftp://hooks.example.com/billing",
    "file:///etc/passwd",
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No allow-list (as in production); the tests run the delivery worker themselves."""
    return settings.model_copy(update={"worker_enabled": False})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as state:
        yield state


async def register(client: httpx.AsyncClient, admin_key: str, url: str) -> httpx.Response:
    return await client.post(
        "/v1/webhook-endpoints",
        headers=bearer(admin_key),
        json={"url": url, "event_types": ["usage.limit_reached"]},
    )


async def announce(pool: asyncpg.Pool) -> None:
    """An event every endpoint subscribes to, written to the outbox as the services write it."""
    async with pool.acquire() as conn, conn.transaction():
        await outbox.emit(conn, "usage.limit_reached", {"customer_id": "user_1", "used": 1})


async def delivery_log(
    client: httpx.AsyncClient, admin_key: str, endpoint_id: str
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=bearer(admin_key)
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_registration_refuses_internal_addresses_notations_and_metadata_hosts(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    """Loopback, private, link-local, unique-local, CGNAT, multicast, unspecified, IPv4 in IPv6,
    metadata addresses and names, odd IPv4 notations, credentials and other schemes: each 422 on
    `url`, and nothing is stored."""
    answers = {url: await register(client, admin_key, url) for url in INTERNAL_URLS}

    accepted = {url: r.status_code for url, r in answers.items() if r.status_code != 422}
    assert not accepted, f"accepted: {accepted}"
    for url, response in answers.items():
        assert response.headers["content-type"] == "application/problem+json"
        [error] = response.json()["errors"]
        assert error["field"] == "url", url
    messages = {url: answers[url].json()["errors"][0]["message"] for url in INTERNAL_URLS}
    assert "loopback" in messages["http://[::1]/hooks"]
    assert "BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE" in messages["http://10.0.0.5/hooks"]
    assert "usual form" in messages["http://0x7f.1/hooks"]
    assert "usual form" in messages["http://2130706433/hooks"]
    assert "cloud metadata" in messages["http://metadata.google.internal/computeMetadata/v1/"]
    assert "cloud metadata" in messages["http://168.63.129.16/machine"]
    assert "user name or password" in messages["https://user:secret@hooks.example.com/billing"]
    listed = await client.get("/v1/webhook-endpoints", headers=bearer(admin_key))
    assert listed.json()["data"] == []
    assert "secret" not in listed.text


async def test_registration_checks_every_address_a_name_resolves_to(
    settings: Settings, pool: asyncpg.Pool, admin_key: str
) -> None:
    """A name is resolved at registration: one internal answer among public ones is enough to
    refuse it; a public name is stored as given, a name that does not resolve yet is accepted."""
    resolver = ScriptedResolver(
        {
            "internal.example.com": [["10.0.0.8"]],
            "mixed.example.com": [[PUBLIC, "127.0.0.1"]],
            "imds.example.com": [["169.254.169.254"]],
            "hooks.example.com": [[PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]],
        }
    )
    async with app_resolving_with(settings, resolver) as client:
        for name in ("internal.example.com", "mixed.example.com", "imds.example.com"):
            refused = await register(client, admin_key, f"https://{name}/hooks")
            assert refused.status_code == 422, name
            assert refused.json()["errors"][0]["field"] == "url"
        assert (
            "resolves to a private address"
            in (await register(client, admin_key, "https://internal.example.com/hooks")).json()[
                "errors"
            ][0]["message"]
        )

        public = await register(client, admin_key, "https://Hooks.Example.com/billing?x=1")
        assert public.status_code == 201, public.text
        assert public.json()["url"] == "https://hooks.example.com/billing?x=1"
        unresolved = await register(client, admin_key, "https://not-yet.example.com/hooks")
        assert unresolved.status_code == 201, unresolved.text


async def test_the_allow_list_opens_listed_hosts_and_networks_but_never_metadata(
    settings: Settings, pool: asyncpg.Pool, admin_key: str
) -> None:
    """`BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE` lets listed names, subdomains and networks
    through; a metadata address inside a listed network stays refused."""
    allowing = settings.model_copy(
        update={
            "outgoing_webhook_allow_private": [
                "localhost", ".svc.cluster.local", "10.0.0.0/8", "169.254.0.0/16",
            ]
        }
    )  # fmt: skip
    resolver = ScriptedResolver({"billing-hooks.apps.svc.cluster.local": [["172.20.1.9"]]})
    async with app_resolving_with(allowing, resolver) as client:
        for url in (
            "http://localhost:8080/hooks",
            "http://10.1.2.3/hooks",
            "http://169.254.10.10/hooks",
            "http://billing-hooks.apps.svc.cluster.local/hooks",
        ):
            response = await register(client, admin_key, url)
            assert response.status_code == 201, (url, response.text)
        for url in ("http://169.254.169.254/latest/", "http://192.168.1.1/hooks"):
            response = await register(client, admin_key, url)
            assert response.status_code == 422, url


async def test_dns_rebinding_is_refused_at_delivery(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, receiver: Receiver
) -> None:
    """A name that answers a public address at registration and 127.0.0.1 at delivery is
    refused after the delivery's own lookup: nothing reaches the receiver listening there."""
    name = "hooks.rebind.test"
    resolver = ScriptedResolver({name: [[PUBLIC], ["127.0.0.1"]]})
    async with app_resolving_with(settings, resolver) as client:
        endpoint = await register(client, admin_key, f"http://{name}:{receiver.port}/hooks")
        assert endpoint.status_code == 201, endpoint.text
        await announce(pool)

        assert await deliver_all(pool, OutboundPolicy(resolver=resolver)) == 1

        [delivery] = await delivery_log(client, admin_key, endpoint.json()["id"])
    assert receiver.received == []
    assert resolver.asked == [name, name]
    assert (delivery["status"], delivery["attempts"]) == ("pending", 1)
    assert (delivery["last_error"], delivery["last_status_code"]) == ("address not allowed", None)


async def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, receiver: Receiver
) -> None:
    """A name that did not resolve at registration and resolves to 127.0.0.1 at delivery is not
    delivered to; the log says only "address not allowed"."""
    name = "hooks.later.test"
    resolver = ScriptedResolver({name: [[], ["127.0.0.1"]]})
    async with app_resolving_with(settings, resolver) as client:
        endpoint = await register(client, admin_key, f"http://{name}:{receiver.port}/hooks")
        assert endpoint.status_code == 201, endpoint.text
        await announce(pool)

        await deliver_all(pool, OutboundPolicy(resolver=resolver))

        [delivery] = await delivery_log(client, admin_key, endpoint.json()["id"])
    assert receiver.received == []
    assert delivery["last_error"] == "address not allowed"


async def test_endpoints_stored_by_an_older_release_are_checked_at_delivery(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, receiver: Receiver
) -> None:
    """Endpoints on localhost or a hex-written loopback, stored before registration checked
    them, are refused by the worker (system resolver, no allow-list); the receiver gets
    nothing."""
    ids = []
    for url in (
        f"http://localhost:{receiver.port}/hooks",
        f"http://127.0.0.1:{receiver.port}/hooks",
        f"http://0x7f.1:{receiver.port}/hooks",
        "http://169.254.169.254/latest/meta-data/",
    ):
        stored = await outbox.insert_endpoint(
            pool, url=url, event_types=["usage.limit_reached"], secret=new_secret()
        )
        ids.append(str(stored.id))
    await announce(pool)

    assert await deliver_all(pool, OutboundPolicy()) == 4

    assert receiver.received == []
    for endpoint_id in ids:
        [delivery] = await delivery_log(client, admin_key, endpoint_id)
        assert delivery["last_error"] == "address not allowed"


async def test_an_allowed_name_is_delivered_to_the_address_that_was_checked(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, receiver: Receiver
) -> None:
    """With 127.0.0.1 allowed, a name only the policy's resolver knows is delivered over the
    one lookup the policy checked (the system could not resolve it), with its own Host header."""
    name = "hooks.pinned.test"
    resolver = ScriptedResolver({name: [["127.0.0.1"]]})
    allowing = settings.model_copy(update={"outgoing_webhook_allow_private": ["127.0.0.1"]})
    async with app_resolving_with(allowing, resolver) as client:
        endpoint = await register(client, admin_key, f"http://{name}:{receiver.port}/hooks")
        assert endpoint.status_code == 201, endpoint.text
        await announce(pool)

        policy = OutboundPolicy(AllowList.parse(["127.0.0.1"]), resolver=resolver)
        await deliver_all(pool, policy)

        [delivery] = await delivery_log(client, admin_key, endpoint.json()["id"])
    assert delivery["status"] == "delivered"
    [(headers, _body)] = receiver.received
    assert headers["host"] == f"{name}:{receiver.port}"
    assert resolver.asked == [name, name]


def make_certificate(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `name` it signed: (CA, certificate, key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)  # noqa: S603, S607

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Webhook test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={name}")
    (folder / "server.ext").write_text(
        f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "server.ext")  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


async def test_https_is_verified_for_the_name_while_connecting_to_the_checked_address(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, tmp_path: Path
) -> None:
    """Over https the pinned connection sends the URL's name (SNI) and verifies the certificate
    for it: the name on the certificate is delivered to, another name on the same address fails
    as "connection failed"."""
    ca, certificate, key = make_certificate(tmp_path, "hooks.tls.test")
    resolver = ScriptedResolver(
        {"hooks.tls.test": [["127.0.0.1"]], "other.tls.test": [["127.0.0.1"]]}
    )
    allowing = settings.model_copy(update={"outgoing_webhook_allow_private": ["127.0.0.1"]})
    trust = ssl.create_default_context(cafile=str(ca))
    async with (
        running_receiver(certfile=certificate, keyfile=key) as receiver,
        app_resolving_with(allowing, resolver) as client,
    ):
        good = await register(client, admin_key, f"https://hooks.tls.test:{receiver.port}/hooks")
        wrong = await register(client, admin_key, f"https://other.tls.test:{receiver.port}/hooks")
        await announce(pool)

        policy = OutboundPolicy(AllowList.parse(["127.0.0.1"]), resolver=resolver)
        await deliver_all(pool, policy, ssl_context=trust)

        [delivered] = await delivery_log(client, admin_key, good.json()["id"])
        [refused] = await delivery_log(client, admin_key, wrong.json()["id"])
    assert delivered["status"] == "delivered"
    assert len(receiver.received) == 1
    assert receiver.received[0][0]["host"] == f"hooks.tls.test:{receiver.port}"
    assert (refused["status"], refused["last_error"]) == ("pending", "connection failed")


async def test_the_delivery_log_never_shows_what_answered(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, receiver: Receiver
) -> None:
    """An error page, a closed port and a receiver too slow to answer are logged as "HTTP 403",
    "connection failed" and "timed out": never the body, the exception or the address."""
    receiver.answer = (403, b"<h1>Jenkins admin</h1> build-secret-4711")
    closed_port = free_port()
    ids = {}
    for name, url in (
        ("error page", receiver.url),
        ("closed port", f"http://127.0.0.1:{closed_port}/hooks"),
    ):
        stored = await outbox.insert_endpoint(
            pool, url=url, event_types=["usage.limit_reached"], secret=new_secret()
        )
        ids[name] = str(stored.id)
    await announce(pool)
    await deliver_all(pool)

    async with running_receiver() as slow:
        slow.delay_seconds = 3.0
        stored = await outbox.insert_endpoint(
            pool, url=slow.url, event_types=["payment.failed"], secret=new_secret()
        )
        ids["slow"] = str(stored.id)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.emit(conn, "payment.failed", {"customer_id": "user_1"})
        await deliver_all(pool, timeout_seconds=0.5)

    logs = {name: await delivery_log(client, admin_key, i) for name, i in ids.items()}
    assert (logs["error page"][0]["last_error"], logs["error page"][0]["last_status_code"]) == (
        "HTTP 403", 403,
    )  # fmt: skip
    assert logs["closed port"][0]["last_error"] == "connection failed"
    assert logs["slow"][0]["last_error"] == "timed out"
    text = str(logs)
    for leak in ("Jenkins", "build-secret", "Error", "refused", "127.0.0.1", str(closed_port)):
        assert leak not in text


async def test_credentials_stored_in_endpoint_urls_are_removed_on_upgrade(
    empty_database: str,
) -> None:
    """Migration 0013 drops `user:password@` from endpoint URLs stored by older releases, and
    the database refuses such a URL from then on."""
    migrations = discover_migrations(migrations_dir())
    conn = await asyncpg.connect(empty_database)
    try:
        await apply_migrations(conn, [m for m in migrations if m.version < 13])
        await conn.execute(
            "INSERT INTO webhook_endpoints (url, event_types, secret) VALUES "
            "('https://app:s3cr%40t@hooks.example.com/b?u=x@y', '{order.completed}', 'whsec_x'),"
            "('https://hooks.example.com/plain', '{order.completed}', 'whsec_y')"
        )
        await apply_migrations(conn, migrations)
        urls = await conn.fetch("SELECT url FROM webhook_endpoints ORDER BY url")
        assert [row["url"] for row in urls] == [
            "https://hooks.example.com/b?u=x@y",
            "https://hooks.example.com/plain",
        ]
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO webhook_endpoints (url, event_types, secret) VALUES "
                "('http://u:p@hooks.example.com/', '{order.completed}', 'whsec_z')"
            )
    finally:
        await conn.close()
