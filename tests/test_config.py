"""Settings: environment parsing, and refusing to start on a bad or mismatched configuration."""

from __future__ import annotations

import pytest

from billing_service.cli import main
from billing_service.config import (
    ConfigurationError,
    Environment,
    load_settings,
    startup_warnings,
    unsafe_settings,
)

# A production configuration with nothing unsafe in it.
SAFE_PRODUCTION = {
    "BILLING_ENV": "production",
    "BILLING_STRIPE_SECRET_KEY": "sk_live_abc",
    "BILLING_STRIPE_WEBHOOK_SECRETS": "whsec_current,whsec_previous",
    "BILLING_ALLOWED_REDIRECT_HOSTS": "app.example.com,example.org",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)


def test_lists_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several webhook secrets (rotation) and redirect hosts come as comma-separated values."""
    monkeypatch.setenv("BILLING_STRIPE_WEBHOOK_SECRETS", "whsec_new, whsec_old")
    monkeypatch.setenv("BILLING_ALLOWED_REDIRECT_HOSTS", "App.example.com,example.org")
    settings = load_settings()
    assert [s.get_secret_value() for s in settings.stripe_webhook_secrets] == [
        "whsec_new",
        "whsec_old",
    ]
    assert settings.allowed_redirect_hosts == ["app.example.com", "example.org"]


def test_defaults_need_no_environment() -> None:
    """With nothing set, the service is in development with console logs and no Stripe."""
    settings = load_settings()
    assert settings.env is Environment.DEVELOPMENT
    assert settings.effective_log_format == "console"
    assert settings.stripe_secret_key is None
    assert str(settings.stripe_api_base) == "https://api.stripe.com/"


def test_production_refuses_a_test_mode_stripe_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """BILLING_ENV=production with sk_test_ fails, naming the variable."""
    monkeypatch.setenv("BILLING_ENV", "production")
    monkeypatch.setenv("BILLING_STRIPE_SECRET_KEY", "sk_test_abc")
    with pytest.raises(ConfigurationError, match=r"^BILLING_STRIPE_SECRET_KEY: .*test-mode"):
        load_settings()


def test_development_refuses_a_live_stripe_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live key outside production fails, naming the variable."""
    monkeypatch.setenv("BILLING_STRIPE_SECRET_KEY", "sk_live_abc")
    with pytest.raises(ConfigurationError, match=r"^BILLING_STRIPE_SECRET_KEY: .*live-mode"):
        load_settings()


def test_production_accepts_a_live_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live keys and restricted live keys are fine in production."""
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    for key in ("sk_live_abc", "rk_live_abc"):
        monkeypatch.setenv("BILLING_STRIPE_SECRET_KEY", key)
        assert load_settings().stripe_livemode is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BILLING_PORT", "eighty"),
        ("BILLING_ENV", "staging"),
        ("BILLING_LOG_LEVEL", "loud"),
        ("BILLING_STRIPE_API_BASE", "not a url"),
        ("BILLING_MAX_BODY_BYTES", "10"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Each invalid value is reported on one line that starts with the variable's name."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith(f"{name}: ")


def test_cli_fails_with_one_line_per_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command exits 2 and prints one clear line naming the setting, no traceback."""
    monkeypatch.setenv("BILLING_PORT", "0")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("billing-service: configuration error: BILLING_PORT: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_in_production_requires_a_database_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Production never falls back to an embedded database."""
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    assert main(["migrate"]) == 2
    assert "BILLING_DATABASE_URL: required when BILLING_ENV=production" in capsys.readouterr().err


def test_job_schedules_merge_into_the_defaults_and_must_be_cron(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BILLING_JOB_SCHEDULES overrides some jobs' cron schedules; a bad one names the job."""
    monkeypatch.setenv("BILLING_JOB_SCHEDULES", '{"prune": "0 5 * * 0"}')
    assert load_settings().job_schedules == {"reconcile": "0 3 * * *", "prune": "0 5 * * 0"}
    monkeypatch.setenv("BILLING_JOB_SCHEDULES", '{"reconcile": "every day"}')
    with pytest.raises(ConfigurationError, match=r"^BILLING_JOB_SCHEDULES: reconcile: "):
        load_settings()


def test_safe_production_settings_load_with_nothing_to_warn_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live key, whsec_ secrets, https Stripe and exact redirect hosts: production starts."""
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.is_production
    assert unsafe_settings(settings) == []
    assert startup_warnings(settings) == []


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("BILLING_STRIPE_SECRET_KEY", None, "unset"),
        ("BILLING_STRIPE_WEBHOOK_SECRETS", None, "unset"),
        ("BILLING_STRIPE_WEBHOOK_SECRETS", "whsec_current,sig_previous", "secret 2 does not"),
        ("BILLING_STRIPE_API_BASE", "http://api.stripe.com", "is not https"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "app.example.com/billing", "has a path"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "*.example.com", "is a wildcard"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "*", "is a wildcard"),
        ("BILLING_CORS_ORIGINS", "*", "'*' lets any web page read entitlements"),
        ("BILLING_CORS_ORIGINS", '["https://app.example.com", "*"]', "list each origin exactly"),
    ],
)
def test_production_refuses_unsafe_settings_and_other_environments_warn(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str | None, problem: str
) -> None:
    """Each unsafe setting stops production with one line naming it; elsewhere it is a warning."""
    for variable, safe in SAFE_PRODUCTION.items():
        monkeypatch.setenv(variable, safe)
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith(f"{name}: ")
    assert problem in line
    assert "sig_previous" not in line  # a secret's value is never echoed

    monkeypatch.setenv("BILLING_ENV", "test")
    monkeypatch.setenv("BILLING_STRIPE_SECRET_KEY", "sk_test_abc")
    if name == "BILLING_STRIPE_SECRET_KEY":
        monkeypatch.delenv(name)
    [warning] = startup_warnings(load_settings())
    assert warning == line


@pytest.mark.parametrize("hosts", ["https://app.example.com", "app.example.com,http://example.org"])
@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_a_redirect_host_with_a_scheme_is_refused_everywhere_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, hosts: str, env: str
) -> None:
    """A URL where a host name belongs could never match; every environment refuses it."""
    for variable, safe in SAFE_PRODUCTION.items():
        monkeypatch.setenv(variable, safe)
    monkeypatch.setenv("BILLING_ENV", env)
    if env != "production":
        monkeypatch.delenv("BILLING_STRIPE_SECRET_KEY")
    monkeypatch.setenv("BILLING_ALLOWED_REDIRECT_HOSTS", hosts)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith("BILLING_ALLOWED_REDIRECT_HOSTS: ")
    assert "has a scheme; give host names only, e.g. " in line


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not json", "not valid JSON"),
        ('["prune"]', "must be a JSON object"),
        ('{"prune": 5}', "must be a JSON object"),
        ('{"purne": "0 5 * * *"}', "no job named 'purne'"),
    ],
)
def test_job_schedules_that_are_not_a_json_object_of_jobs_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """Malformed JSON, another JSON type or an unknown job: one line naming the variable."""
    monkeypatch.setenv("BILLING_JOB_SCHEDULES", value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith("BILLING_JOB_SCHEDULES: ")
    assert problem in line


@pytest.mark.parametrize("url", ["mysql://x", "sqlite:///billing.db", "localhost:5432"])
def test_a_database_url_that_is_not_postgresql_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Only PostgreSQL URLs are accepted, and the refusal does not echo the URL."""
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith("BILLING_DATABASE_URL: must be a PostgreSQL URL")
    assert url not in line


def test_the_read_replica_url_is_postgresql_or_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """BILLING_DATABASE_READ_URL is checked like the primary's URL; empty (a Secret's blank key)
    means no replica."""
    monkeypatch.setenv("BILLING_DATABASE_READ_URL", "")
    assert load_settings().database_read_url is None
    monkeypatch.setenv("BILLING_DATABASE_READ_URL", "mysql://reader:pw@replica/billing")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith("BILLING_DATABASE_READ_URL: must be a PostgreSQL URL")
    assert "pw@replica" not in line
    monkeypatch.setenv("BILLING_DATABASE_READ_URL", "postgresql://reader@replica:5432/billing")
    monkeypatch.setenv("BILLING_READ_REPLICA_MAX_LAG_SECONDS", "0.5")
    settings = load_settings()
    assert settings.database_read_url is not None
    assert settings.read_replica_max_lag_seconds == 0.5


def test_a_setting_pydantic_settings_cannot_decode_is_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any JSON-typed setting that is not JSON (as a future one would be) names its variable."""
    from pydantic import Field
    from pydantic_settings import SettingsError

    from billing_service.config import Settings, describe_settings_error

    class WithMapping(Settings):
        extra_mapping: dict[str, int] = Field(default_factory=dict)

    monkeypatch.setenv("BILLING_EXTRA_MAPPING", "{not json")
    with pytest.raises(SettingsError) as raised:
        WithMapping()
    assert describe_settings_error(raised.value) == (
        "BILLING_EXTRA_MAPPING: could not be parsed (a list or object setting must be JSON)"
    )


@pytest.mark.parametrize(
    "value",
    [
        "https://App.Example.com, http://localhost:5173",
        '["https://app.example.com:443/", "http://localhost:5173"]',
    ],
)
def test_cors_origins_are_read_as_a_list_and_written_as_browsers_send_them(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Comma-separated or a JSON list; lower case, no default port, no trailing slash."""
    monkeypatch.setenv("BILLING_CORS_ORIGINS", value)
    assert load_settings().cors_origins == ["https://app.example.com", "http://localhost:5173"]


def test_no_cors_origin_is_allowed_by_default() -> None:
    """Nothing is listed unless configured."""
    assert load_settings().cors_origins == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("app.example.com", "is not an http or https origin"),
        ("null", "is not an http or https origin"),
        ("ftp://app.example.com", "is not an http or https origin"),
        ("https://app.example.com/pricing", "is not an origin"),
        ("https://*.example.com", "is a wildcard"),
        ("https://app.example.com:99999", "invalid port"),
        ('["https://app.example.com"', "not a valid JSON list"),
    ],
)
@pytest.mark.parametrize("env", ["development", "production"])
def test_a_cors_origin_that_could_never_match_exactly_is_refused_everywhere(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str, env: str
) -> None:
    """One line naming BILLING_CORS_ORIGINS, in every environment."""
    for variable, safe in SAFE_PRODUCTION.items():
        monkeypatch.setenv(variable, safe)
    monkeypatch.setenv("BILLING_ENV", env)
    if env != "production":
        monkeypatch.delenv("BILLING_STRIPE_SECRET_KEY")
    monkeypatch.setenv("BILLING_CORS_ORIGINS", value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()
    assert line.startswith("BILLING_CORS_ORIGINS: ")
    assert problem in line
