"""Settings: every knob the service has, read from `BILLING_*` environment variables.

Settings are built once at start-up and passed in; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, HttpUrl, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from billing_service.cron import Cron, CronError
from billing_service.outbound import AllowList

LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")


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
    data_dir: Path = Path(".data")

    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    stripe_api_version: str | None = None
    stripe_api_base: HttpUrl = HttpUrl("https://api.stripe.com")
    stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=5)

    allowed_redirect_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    downgrade_at: Literal["period_end", "now"] = "period_end"
    trial_repeats: bool = False
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    worker_enabled: bool = True
    job_schedules: dict[str, str] = Field(
        default_factory=lambda: {"reconcile": "0 3 * * *", "prune": "30 4 * * *"}
    )
    retention_days: int = Field(default=90, ge=1, le=3650)
    past_due_grace_days: int = Field(default=7, ge=0, le=90)

    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    rate_limit_per_key: float = Field(default=0.0, ge=0)
    rate_limit_burst: float = Field(default=0.0, ge=0)
    auth_failures_per_minute: int = Field(default=30, ge=1)

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

    @field_validator("allowed_redirect_hosts")
    @classmethod
    def _hosts_are_lowercase(cls, hosts: list[str]) -> list[str]:
        return [host.lower() for host in hosts]

    @field_validator("job_schedules")
    @classmethod
    def _schedules_are_cron(cls, schedules: dict[str, str]) -> dict[str, str]:
        """Overrides merge into the defaults; each must be valid cron."""
        merged = {"reconcile": "0 3 * * *", "prune": "30 4 * * *"} | schedules
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
    """Build settings from the environment, turning validation errors into named one-liners."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"])
        name = f"BILLING_{field.upper()}" if field else "settings"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "\n".join(lines)
