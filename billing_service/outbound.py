"""Where outgoing webhooks may go: public http(s) URLs without credentials, checked by address.

An address is refused when it is loopback, private, link-local, unique-local, shared (CGNAT),
multicast, unspecified or reserved, or a cloud metadata service; IPv4 written inside IPv6
(`::ffff:a.b.c.d`, NAT64) counts as the IPv4 address. `BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE`
lets listed hosts and networks through, never a metadata service. Names are resolved by the
policy's resolver and every answer is checked; `outbound_http.py` then connects to exactly the
addresses checked here, so an answer that changes between check and connection (DNS
rebinding) cannot slip past.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

import httpx
from pydantic import HttpUrl, TypeAdapter, ValidationError

if TYPE_CHECKING:
    from billing_service.config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, as text; raises OSError when it cannot.
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOW_SETTING = "BILLING_OUTGOING_WEBHOOK_ALLOW_PRIVATE"
METADATA = "cloud metadata"
# Registration waits this long for DNS; a name that does not resolve yet is checked at delivery.
REGISTRATION_RESOLVE_SECONDS = 3.0

# Instance metadata services: never allowed, whatever the allow-list says. Most sit in ranges
# refused anyway; Azure's WireServer address is public, and the allow-list must not open any.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS Pod Identity
        "168.63.129.16",  # Azure WireServer
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
    )
)
METADATA_HOSTS = frozenset(
    (
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
        "metadata.packet.net",
    )
)

_N = ipaddress.ip_network
# Special-purpose ranges (IANA registries), first match wins.
_SPECIAL_RANGES: tuple[tuple[Network, str], ...] = (
    (_N("0.0.0.0/8"), "unspecified"),
    (_N("10.0.0.0/8"), "private"),
    (_N("100.64.0.0/10"), "shared (CGNAT)"),
    (_N("127.0.0.0/8"), "loopback"),
    (_N("169.254.0.0/16"), "link-local"),
    (_N("172.16.0.0/12"), "private"),
    (_N("192.0.0.0/24"), "reserved"),
    (_N("192.0.2.0/24"), "reserved"),
    (_N("192.88.99.0/24"), "reserved"),
    (_N("192.168.0.0/16"), "private"),
    (_N("198.18.0.0/15"), "reserved"),
    (_N("198.51.100.0/24"), "reserved"),
    (_N("203.0.113.0/24"), "reserved"),
    (_N("224.0.0.0/4"), "multicast"),
    (_N("240.0.0.0/4"), "reserved"),
    (_N("::/128"), "unspecified"),
    (_N("::1/128"), "loopback"),
    (_N("fc00::/7"), "unique-local"),
    (_N("fe80::/10"), "link-local"),
    (_N("ff00::/8"), "multicast"),
    (_N("2001::/23"), "reserved"),  # Teredo, benchmarking, ORCHID
    (_N("2001:db8::/32"), "reserved"),
    (_N("2002::/16"), "reserved"),  # 6to4 carries any IPv4 address
    (_N("3fff::/20"), "reserved"),
)
_GLOBAL_UNICAST_V6 = _N("2000::/3")
_NAT64 = _N("64:ff9b::/96")

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_ENTRY = re.compile(rf"\.?{_LABEL}(\.{_LABEL})*")
_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


class DestinationRefused(Exception):
    """A URL or address outgoing webhooks may not reach; the message says which rule, safely,
    and `category` which kind of address it was (`loopback`, `private`, …) when one was."""

    def __init__(self, message: str, category: str | None = None) -> None:
        super().__init__(message)
        self.category = category


def address_category(address: Address) -> str | None:
    """Why an address is not a public destination (`loopback`, `private`, …), or None."""
    if address in METADATA_ADDRESSES:
        return METADATA
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if embedded is not None:
            return address_category(embedded)
    for network, category in _SPECIAL_RANGES:
        if address in network:
            return category
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None if address.is_global else "reserved"


def ip_literal(host: str) -> Address | None:
    """The address a URL host names directly (canonical forms only), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_name(host: str) -> str:
    """A host as the rules compare it: lower case, without the root's trailing dot."""
    return host.lower().removesuffix(".")


def is_localhost_name(name: str) -> bool:
    """`localhost` and its subdomains are loopback by definition (RFC 6761)."""
    return name == "localhost" or name.endswith(".localhost")


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts (`name`, or `.suffix` for its subdomains) and networks let through though private."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Read the setting's entries; ValueError names the first one that is neither a host nor
        an address or network, or that would open a metadata service."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            try:
                network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                network = None
            if network is not None:
                if network.num_addresses == 1 and network[0] in METADATA_ADDRESSES:
                    raise ValueError(f"{raw}: a cloud metadata address is never allowed")
                networks.append(network)
            elif _HOST_ENTRY.fullmatch(entry.removesuffix(".")):
                name = host_name(entry)
                if name.lstrip(".") in METADATA_HOSTS:
                    raise ValueError(f"{raw}: a cloud metadata host is never allowed")
                if name.startswith("."):
                    suffixes.append(name)
                else:
                    names.add(name)
            else:
                raise ValueError(
                    f"{raw!r}: give a host name, .domain (its subdomains), an IP address or a "
                    "CIDR network; no scheme, port, path or wildcard"
                )
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, name: str) -> bool:
        """Whether `name` is listed, or a subdomain of a listed `.domain`."""
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def allows_address(self, address: Address) -> bool:
        """Whether `address` lies in a listed network."""
        return any(address in network for network in self.networks)


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (getaddrinfo): the hosts file, DNS, numeric forms alike."""
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in answers]


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The rules for one deployment: what the allow-list opens, whether http is allowed, and
    which resolver answers (tests inject their own function)."""

    allow: AllowList = AllowList()
    https_only: bool = False
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> Self:
        """The deployment's policy: its allow-list, and https only in production."""
        return cls(
            allow=AllowList.parse(settings.outgoing_webhook_allow_private),
            https_only=settings.is_production,
            resolver=resolver,
        )

    def refusal(self, name: str, address: Address) -> str | None:
        """The category that keeps `address` (of host `name`) out, or None if it may be used."""
        category = address_category(address)
        if category is None or category == METADATA:
            return category
        if self.allow.allows_name(name) or self.allow.allows_address(address):
            return None
        return category

    def check_url(self, url: str) -> httpx.URL:
        """The URL parsed exactly as it will be sent, or DestinationRefused: the checks that need
        no DNS. Run on every delivery too, for endpoints stored under older rules."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise DestinationRefused("must be an absolute http or https URL") from None
        if target.scheme not in ("http", "https") or not target.raw_host:
            raise DestinationRefused("must be an absolute http or https URL")
        if self.https_only and target.scheme != "https":
            raise DestinationRefused("must use https when BILLING_ENV=production")
        if target.userinfo:
            raise DestinationRefused(
                "must not contain a user name or password (user:password@); "
                "the signature is what authenticates a delivery"
            )
        name = host_name(target.raw_host.decode("ascii"))
        if name in METADATA_HOSTS:
            raise DestinationRefused("is a cloud metadata host, which webhooks may never reach")
        literal = ip_literal(name)
        if literal is not None:
            reason = self.refusal(name, literal)
            if reason is not None:
                raise DestinationRefused(self._explain(f"is {_a(reason)} address", reason), reason)
        elif is_localhost_name(name) and not self.allow.allows_name(name):
            raise DestinationRefused(self._explain("is a loopback name", "loopback"), "loopback")
        return target

    async def checked_addresses(self, host: str, port: int) -> list[Address]:
        """Resolve `host` once and return its addresses if every one of them is allowed.
        OSError if it does not resolve; DestinationRefused if any answer is refused."""
        name = host_name(host)
        if name in METADATA_HOSTS:
            raise DestinationRefused(f"{name} is a cloud metadata host", METADATA)
        literal = ip_literal(name)
        if literal is not None:
            addresses = [literal]
        elif is_localhost_name(name) and not self.allow.allows_name(name):
            raise DestinationRefused(f"{name} is a loopback name", "loopback")
        else:
            answers = await self.resolver(host, port)
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
            if not addresses:
                raise OSError(f"{name} has no address")
        for address in addresses:
            reason = self.refusal(name, address)
            if reason is not None:
                raise DestinationRefused(f"{name} resolves to {_a(reason)} address", reason)
        return addresses

    async def vet_new_url(self, raw: str) -> str:
        """The URL to store for a new endpoint, or DestinationRefused saying what is wrong.

        IPv4 must be written as four decimal numbers: `0x7f.1`, `2130706433` or `127.1` are
        refused rather than quietly rewritten. A name is resolved too; one that does not
        resolve yet is accepted and checked again at every delivery.
        """
        try:
            parsed = _HTTP_URL.validate_python(raw)
        except ValidationError:
            raise DestinationRefused("must be an absolute http or https URL") from None
        canonical = ip_literal(parsed.host or "")
        if canonical is not None:
            written = _written_host(raw)
            if written is not None and ip_literal(host_name(written)) != canonical:
                raise DestinationRefused(
                    "write an IP address in its usual form (IPv4 as four decimal numbers "
                    "like 203.0.113.7), not in hexadecimal, octal, integer or short notation"
                )
        target = self.check_url(str(parsed))
        name = host_name(target.raw_host.decode("ascii"))
        if ip_literal(name) is None:
            try:
                async with asyncio.timeout(REGISTRATION_RESOLVE_SECONDS):
                    await self.checked_addresses(name, target.port or _default_port(target))
            except (OSError, TimeoutError, ValueError):
                pass  # not resolvable yet: every delivery resolves and checks again
            except DestinationRefused as exc:
                category = exc.category or "reserved"
                raise DestinationRefused(
                    self._explain(f"resolves to {_a(category)} address", category), category
                ) from None
        return str(parsed)

    def _explain(self, problem: str, category: str) -> str:
        """The refusal, with the way out when the allow-list offers one."""
        if category in (METADATA, "multicast", "unspecified", "reserved"):
            return f"{problem}; webhooks may only go to public addresses"
        return f"{problem}; webhooks go to public addresses unless {ALLOW_SETTING} lists the host"


def _a(category: str) -> str:
    """The category with its article: "a loopback", "an unspecified"."""
    return ("an " if category[0] in "aeiou" else "a ") + category


def _written_host(raw: str) -> str | None:
    """The host as the caller typed it, before any normalisation."""
    try:
        return urlsplit(raw.strip()).hostname
    except ValueError:
        return None


def _default_port(target: httpx.URL) -> int:
    """The port a URL without one connects to."""
    return 443 if target.scheme == "https" else 80
