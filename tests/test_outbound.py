"""The outbound policy's rules on their own: address categories, odd notations as resolvers read
them, the allow-list setting, and https in production."""

from __future__ import annotations

import ipaddress

import pytest

from billing_service.config import ConfigurationError, Environment, Settings, load_settings
from billing_service.outbound import (
    AllowList,
    DestinationRefused,
    OutboundPolicy,
    address_category,
)


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, nothing binds
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),
        ("2001:db8::1", "reserved"),
        ("2002:7f00:1::", "reserved"),
        ("::127.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("93.184.215.14", None),
        ("::ffff:93.184.215.14", None),
        ("64:ff9b::5db8:d70e", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_every_kind_of_internal_address_is_named(address: str, category: str | None) -> None:
    """Each special-purpose range has its category; public addresses have none."""
    assert address_category(ipaddress.ip_address(address)) == category


@pytest.mark.parametrize("host", ["0x7f.1", "2130706433", "017700000001", "127.1", "0x7f000001"])
async def test_odd_ipv4_notations_resolve_to_loopback_and_are_refused(host: str) -> None:
    """The system resolver reads hexadecimal, octal, integer and short IPv4 as the C library
    does; the numeric answer is what gets checked."""
    with pytest.raises(DestinationRefused, match="loopback"):
        await OutboundPolicy().checked_addresses(host, 80)


async def test_the_allow_list_matches_names_suffixes_and_networks() -> None:
    """Listed names and `.domain` subdomains pass whatever they resolve to (metadata aside);
    listed networks pass for any name."""
    policy = OutboundPolicy(AllowList.parse(["hooks.dev", ".svc.local", "10.0.0.0/8", "[::1]"]))
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal("hooks.dev", loopback) is None
    assert policy.refusal("a.svc.local", loopback) is None
    assert policy.refusal("svc.local", loopback) == "loopback"
    assert policy.refusal("other.dev", loopback) == "loopback"
    assert policy.refusal("any.example", ipaddress.ip_address("10.9.8.7")) is None
    assert policy.refusal("any.example", ipaddress.ip_address("::1")) is None
    metadata = ipaddress.ip_address("169.254.169.254")
    assert policy.refusal("hooks.dev", metadata) == "cloud metadata"


@pytest.mark.parametrize(
    "entry",
    ["https://hooks.dev", "hooks.dev:8080", "hooks.dev/path", "*.dev", "*", "169.254.169.254",
     "metadata.google.internal", "10.0.0.0/33"],
)  # fmt: skip
def test_a_bad_allow_list_entry_stops_start_up_naming_the_variable(entry: str) -> None:
    """Schemes, ports, paths, wildcards, metadata services and bad networks are refused in one
    line that names the variable."""
    with pytest.raises(ConfigurationError) as refused:
        load_settings(outgoing_webhook_allow_private=f"localhost,{entry}")
    message = str(refused.value)
    assert message.startswith("BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE: ")
    assert "\n" not in message


def test_the_allow_list_reads_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE=127.0.0.1, localhost,.internal` is three entries."""
    monkeypatch.setenv("BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE", "127.0.0.1, localhost,.internal")
    settings = load_settings()
    assert settings.outgoing_webhook_allow_private == ["127.0.0.1", "localhost", ".internal"]


async def test_production_allows_https_only() -> None:
    """With BILLING_ENV=production an http URL is refused, even to a listed host."""
    settings = Settings(outgoing_webhook_allow_private=["hooks.internal"]).model_copy(
        update={"env": Environment.PRODUCTION}
    )
    policy = OutboundPolicy.from_settings(settings)
    with pytest.raises(DestinationRefused, match="https"):
        await policy.vet_new_url("http://hooks.internal/billing")
    with pytest.raises(DestinationRefused, match="https"):
        policy.check_url("http://hooks.internal/billing")
    assert policy.check_url("https://hooks.internal/billing").host == "hooks.internal"
