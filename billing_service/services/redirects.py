"""Return URLs for Checkout and the portal: https, on an allowed host, and nothing clever.

Stripe sends the customer's browser to these URLs, so an attacker who can choose them can phish
with our checkout page. Anything that parsers might read two ways is refused outright.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from billing_service.errors import FieldError

MAX_URL_LENGTH = 2048


def redirect_url_error(  # noqa: PLR0911 - a ladder of independent checks
    field: str, url: str, allowed_hosts: list[str]
) -> FieldError | None:
    """Why `url` may not be used as a redirect, or None when it may."""
    if not allowed_hosts:
        return FieldError(field, "no redirect hosts are allowed (BILLING_ALLOWED_REDIRECT_HOSTS)")
    if len(url) > MAX_URL_LENGTH:
        return FieldError(field, f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or c in {"\x7f", "\\"} for c in url):
        return FieldError(field, "must not contain whitespace, control characters or backslashes")
    if not url.isascii():
        return FieldError(field, "must be ASCII (use punycode and percent-encoding)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return FieldError(field, "is not a valid URL")
    if parts.scheme != "https" or not url.startswith("https://"):
        return FieldError(field, "must be an absolute https:// URL")
    if "@" in parts.netloc or parts.username is not None:
        return FieldError(field, "must not contain user information")
    host = (parts.hostname or "").rstrip(".")
    if host not in allowed_hosts:
        return FieldError(field, f"host '{host}' is not in BILLING_ALLOWED_REDIRECT_HOSTS")
    del port  # parsed only to reject malformed ports
    return None


def check_redirect_urls(urls: dict[str, str], allowed_hosts: list[str]) -> list[FieldError]:
    return [
        error
        for field, url in urls.items()
        if (error := redirect_url_error(field, url, allowed_hosts)) is not None
    ]
