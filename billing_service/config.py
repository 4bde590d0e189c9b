"""Settings: every knob the service has, read from `BILLING_*` environment variables.

Settings are built once at start-up and passed in; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, HttpUrl, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from billing_service.cron import Cron, CronError
from billing_service.outbound import AllowList

LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
STRIPE_SIGNING_PREFIX = "whsec_"
DATABASE_SCHEMES = ("postgresql", "postgres")
DEFAULT_JOB_SCHEDULES = {"reconcile": "0 3 * * *", "prune": "30 4 * * *"}


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _split_csv(value: object) -> object:
    """Accept `a,b,c` in the environment for list settings (and a real list in code)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The service's configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore", frozen=True)

    env: Environment = Environment.DEVELOPMENT
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)

    database_url: SecretStr | None = None
    database_pool_min: int = Field(default=2, ge=0)
    database_pool_max: int = Field(default=10, ge=1)
    # A streaming replica for reads that tolerate lag (lists, reports, usage history), used while
    # it is at most `read_replica_max_lag_seconds` behind; the primary serves them otherwise.
    database_read_url: SecretStr | None = None
    read_replica_max_lag_seconds: float = Field(default=5.0, gt=0, le=3600)
    data_dir: Path = Path(".data")

    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    stripe_api_version: str | None = None
    stripe_api_base: HttpUrl = HttpUrl("https://api.stripe.com")
    stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=5)
    # How long a page of a customer's invoices read from Stripe is shown again without asking
    # Stripe (0: always ask); any page read in the last day answers while Stripe is down.
    invoice_cache_seconds: int = Field(default=60, ge=0, le=3600)
    # Stripe Tax: automatic tax, tax id and billing address collection in Checkout, and
    # automatic tax on plan changes, now or scheduled (docs/billing.md: what to set up first).
    stripe_tax: bool = False

    allowed_redirect_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Browser origins that may read a customer's entitlements with a customer token (cors.py).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    downgrade_at: Literal["period_end", "now"] = "period_end"
    # When removed seats go: at the end of the paid period (no refund), or now with a credit.
    seat_reduction_at: Literal["period_end", "now"] = "period_end"
    trial_repeats: bool = False
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    worker_enabled: bool = True
    job_schedules: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_JOB_SCHEDULES)
    )
    retention_days: int = Field(default=90, ge=1, le=3650)
    past_due_grace_days: int = Field(default=7, ge=0, le=90)

    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Customers whose entitlement snapshot each process keeps (0: off), and for how long at most.
    entitlement_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    entitlement_cache_seconds: float = Field(default=5.0, gt=0, le=300)
    rate_limit_per_key: float = Field(default=0.0, ge=0)
    rate_limit_burst: float = Field(default=0.0, ge=0)
    rate_limit_public_per_address: float = Field(default=10.0, ge=0)
    auth_failures_per_minute: int = Field(default=30, ge=1)
    # The operator console at /console (None: on in development only), and how long a sign-in
    # lasts.
    console_enabled: bool | None = None
    console_session_minutes: int = Field(default=480, ge=5, le=10_080)

    # `serve`: which proxies may name the client, and how long and how many connections are held.
    forwarded_allow_ips: str | None = None
    http_keep_alive_seconds: int = Field(default=5, ge=1, le=3600)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    http_max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    http_max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    http_backlog: int = Field(default=2048, ge=1, le=65535)
    http_shutdown_timeout_seconds: int = Field(default=30, ge=1, le=3600)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_are_addresses(cls, value: str | None) -> str | None:
        """IP addresses or networks, or `*`: uvicorn would take anything else as a literal host
        name that never matches, silently ignoring the proxy's header."""
        if value is None or value.strip() == "*":
            return value
        for item in (part.strip() for part in value.split(",")):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (or '*')") from None
        return value

    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    mail_from: str = "billing@localhost"
    owner_email: str | None = None
    portal_login_url: HttpUrl | None = None

    # Hosts (`name`, `.domain`) and IP networks outgoing webhooks may reach though private.
    outgoing_webhook_allow_private: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("outgoing_webhook_allow_private", mode="before")
    @classmethod
    def _outgoing_webhook_allow_private(cls, value: object) -> object:
        """`a,b,c`; each entry must read as a host or a network (see `outbound.AllowList`)."""
        entries = _split_csv(value)
        if isinstance(entries, list):
            AllowList.parse(str(entry) for entry in entries)
        return entries

    @field_validator("stripe_webhook_secrets", "allowed_redirect_hosts", mode="before")
    @classmethod
    def _lists_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_from_csv_or_json(cls, value: object) -> object:
        """`a,b` or a JSON list `["a", "b"]`."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"not a valid JSON list ({exc.msg} at character {exc.pos})"
                ) from None
        return _split_csv(value)

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_exact(cls, origins: list[str]) -> list[str]:
        """Each entry is `*` or one exact origin, written the way browsers send it."""
        return [origin if origin == "*" else _exact_origin(origin) for origin in origins]

    @field_validator("allowed_redirect_hosts")
    @classmethod
    def _hosts_are_lowercase_host_names(cls, hosts: list[str]) -> list[str]:
        """Hosts, not URLs: a scheme is refused in every environment (it could never match)."""
        for host in hosts:
            if "://" in host:
                bare = urlsplit(host).hostname or "app.example.com"
                raise ValueError(
                    f"'{host}' has a scheme; give host names only, e.g. {bare} "
                    "(return URLs must be https anyway)"
                )
        return [host.lower() for host in hosts]

    @field_validator("database_read_url", mode="before")
    @classmethod
    def _empty_read_url_is_unset(cls, value: object) -> object:
        """An empty value (a Secret's key left blank) means no replica."""
        if value == "" or (isinstance(value, SecretStr) and not value.get_secret_value()):
            return None
        return value

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _database_url_is_postgresql(cls, url: SecretStr | None) -> SecretStr | None:
        """Only PostgreSQL is supported; say so before any driver tries the URL."""
        if url is None:
            return None
        scheme = url.get_secret_value().partition("://")[0].lower()
        if scheme not in DATABASE_SCHEMES:
            raise ValueError(
                "must be a PostgreSQL URL, e.g. postgresql://user:password@host:5432/billing"
            )
        return url

    @field_validator("job_schedules", mode="before")
    @classmethod
    def _schedules_from_json(cls, value: object) -> object:
        """The environment gives a JSON object; say what is wrong with anything else."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"not valid JSON ({exc.msg} at character {exc.pos}); give an object such as "
                    '{"prune": "30 4 * * *"}'
                ) from None
        if not isinstance(value, dict) or not all(
            isinstance(job, str) and isinstance(expression, str)
            for job, expression in value.items()
        ):
            raise ValueError(
                'must be a JSON object of job names and cron strings, e.g. {"prune": "30 4 * * *"}'
            )
        return value

    @field_validator("job_schedules")
    @classmethod
    def _schedules_are_cron(cls, schedules: dict[str, str]) -> dict[str, str]:
        """Overrides merge into the defaults; each must name a job and be valid cron."""
        if unknown := sorted(set(schedules) - set(DEFAULT_JOB_SCHEDULES)):
            known = ", ".join(sorted(DEFAULT_JOB_SCHEDULES))
            raise ValueError(f"no job named {unknown[0]!r} (jobs: {known})")
        merged = DEFAULT_JOB_SCHEDULES | schedules
        for job, expression in merged.items():
            try:
                Cron.parse(expression)
            except CronError as exc:
                raise ValueError(f"{job}: {exc}") from None
        return merged

    @field_validator("database_pool_max")
    @classmethod
    def _pool_bounds(cls, maximum: int, info: ValidationInfo) -> int:
        minimum = info.data.get("database_pool_min", 0)
        if minimum > maximum:
            raise ValueError(f"must be at least BILLING_DATABASE_POOL_MIN ({minimum})")
        return maximum

    @field_validator("stripe_secret_key")
    @classmethod
    def _stripe_key_matches_environment(
        cls, secret: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        """Refuse a test key in production and a live key anywhere else."""
        if secret is None:
            return None
        key = secret.get_secret_value()
        if not key.startswith(LIVE_KEY_PREFIXES + TEST_KEY_PREFIXES):
            raise ValueError("must start with sk_live_, sk_test_, rk_live_ or rk_test_")
        env = info.data.get("env", Environment.DEVELOPMENT)
        is_live = key.startswith(LIVE_KEY_PREFIXES)
        if env is Environment.PRODUCTION and not is_live:
            raise ValueError("a test-mode key is refused when BILLING_ENV=production")
        if env is not Environment.PRODUCTION and is_live:
            raise ValueError(f"a live-mode key is refused when BILLING_ENV={env.value}")
        return secret

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def console_on(self) -> bool:
        """Whether /console is served: as set, else only in development."""
        if self.console_enabled is not None:
            return self.console_enabled
        return self.env is Environment.DEVELOPMENT

    @property
    def stripe_livemode(self) -> bool:
        """Which Stripe mode events and keys must belong to."""
        return self.is_production

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "console"


class ConfigurationError(Exception):
    """A setting is missing or invalid; the message is one line per problem, naming the variable."""


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into named one-liners.

    In production, settings that are valid but unsafe (see `unsafe_settings`) are errors too.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        raise ConfigurationError(describe_settings_error(exc)) from None
    if settings.is_production and (problems := unsafe_settings(settings)):
        raise ConfigurationError("\n".join(problems))
    return settings


def unsafe_settings(settings: Settings) -> list[str]:
    """What would be unsafe with real money, one `BILLING_X: why` line each.

    Production refuses to start on any of them; the other environments log them as warnings at
    start-up (tests and local development use an http fake Stripe and may run without Stripe).
    """
    problems = []
    if settings.stripe_secret_key is None:
        problems.append(
            "BILLING_STRIPE_SECRET_KEY: unset, so routes that need Stripe answer 503 "
            "(required when BILLING_ENV=production)"
        )
    if not settings.stripe_webhook_secrets:
        problems.append(
            "BILLING_STRIPE_WEBHOOK_SECRETS: unset, so no Stripe webhook can be verified "
            "(required when BILLING_ENV=production)"
        )
    for position, secret in enumerate(settings.stripe_webhook_secrets, start=1):
        if not secret.get_secret_value().startswith(STRIPE_SIGNING_PREFIX):
            problems.append(
                f"BILLING_STRIPE_WEBHOOK_SECRETS: secret {position} does not start with "
                f"{STRIPE_SIGNING_PREFIX} (copy the endpoint's signing secret from Stripe)"
            )
    if settings.stripe_api_base.scheme != "https":
        problems.append(
            f"BILLING_STRIPE_API_BASE: {settings.stripe_api_base} is not https "
            "(only a local fake Stripe may be reached without TLS)"
        )
    for host in settings.allowed_redirect_hosts:
        if reason := _host_name_problem(host):
            problems.append(f"BILLING_ALLOWED_REDIRECT_HOSTS: '{host}' {reason}")
    if "*" in settings.cors_origins:
        problems.append(
            "BILLING_CORS_ORIGINS: '*' lets any web page read entitlements with a customer "
            "token; list each origin exactly, e.g. https://app.example.com"
        )
    return problems


def startup_warnings(settings: Settings) -> list[str]:
    """The unsafe settings a non-production process starts with anyway, to log at start-up."""
    return [] if settings.is_production else unsafe_settings(settings)


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")


def _host_name_problem(host: str) -> str | None:
    """Why `host` is not one exact host name (return URLs are matched host for host)."""
    if "*" in host or "?" in host:
        return "is a wildcard; list each host exactly"
    if "/" in host:
        return "has a path; give the host name only"
    if not _HOST_NAME.fullmatch(host):
        return "is not a host name (letters, digits, hyphens and dots; no port or user)"
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _exact_origin(value: str) -> str:
    """`scheme://host[:port]` as a browser's `Origin` header spells it: lower case, no default
    port. Anything else (a path, a wildcard, `null`) is refused, since it could never match or
    would match too much."""
    example = "e.g. https://app.example.com"
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"'{value}' has an invalid port") from None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"'{value}' is not an http or https origin ({example})")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"'{value}' is not an origin: give scheme, host and port only ({example})")
    if "*" in parts.hostname:
        raise ValueError(f"'{value}' is a wildcard; list each origin exactly")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def describe_settings_error(exc: SettingsError) -> str:
    """pydantic-settings' own parse errors name the field in prose; name the variable instead."""
    found = re.search(r'field "([a-z0-9_]+)"', str(exc))
    name = f"BILLING_{found[1].upper()}" if found else "settings"
    return f"{name}: could not be parsed (a list or object setting must be JSON)"


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"])
        name = f"BILLING_{field.upper()}" if field else "settings"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "\n".join(lines)
