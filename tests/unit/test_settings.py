"""Settings: defaults, environment variable names, CODE_OVERRIDES, the API key check, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from oaksend.errors import ConfigError
from oaksend.worker.settings import Settings, load_settings


def _aliases() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
    return {n.upper() for n in names}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment that runs the tests (names are case-insensitive)."""
    names = _aliases()
    for key in list(os.environ):
        if key.upper() in names or key.upper().startswith(("OAKSEND_", "NEWOAKS_")):
            monkeypatch.delenv(key)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults() -> None:
    s = make()
    assert s.database_url == "sqlite:///oaksend.db"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.newoaks_region == "us"
    assert s.newoaks_base_url is None
    assert s.newoaks_api_key is None
    assert s.base_url == "https://usapi.hottask.com"
    assert (s.max_attempts, s.backoff_base_s, s.backoff_cap_s) == (5, 2.0, 300.0)
    assert (s.retry_later_floor_s, s.retry_after_cap_s) == (300.0, 3600.0)
    assert s.default_deadline_s == 3 * 3600.0
    assert s.ambiguous_policy == "retry"
    assert s.code_overrides == {}
    assert (s.default_rate_per_s, s.default_burst) == (1.0, 1)
    assert (s.connect_timeout_s, s.read_timeout_s) == (5.0, 15.0)
    assert s.queue_name == "oaksend"
    assert s.worker_heartbeat_ttl_s == 3.0


@pytest.mark.parametrize(
    ("env", "value", "attribute", "expected"),
    [
        ("DATABASE_URL", "postgresql://u@db/oaksend", "database_url", "postgresql://u@db/oaksend"),
        ("OAKSEND_DATABASE_URL", "sqlite:///x.db", "database_url", "sqlite:///x.db"),
        ("REDIS_URL", "redis://cache:6379/3", "redis_url", "redis://cache:6379/3"),
        ("OAKSEND_REDIS_URL", "redis://cache:6379/4", "redis_url", "redis://cache:6379/4"),
        ("NEWOAKS_REGION", "eu", "newoaks_region", "eu"),
        ("OAKSEND_MAX_ATTEMPTS", "9", "max_attempts", 9),
        ("MAX_ATTEMPTS", "2", "max_attempts", 2),
        ("OAKSEND_BACKOFF_BASE_S", "0.5", "backoff_base_s", 0.5),
        ("OAKSEND_BACKOFF_CAP_S", "60", "backoff_cap_s", 60.0),
        ("OAKSEND_RETRY_LATER_FLOOR_S", "0", "retry_later_floor_s", 0.0),
        ("OAKSEND_DEFAULT_DEADLINE_S", "600", "default_deadline_s", 600.0),
        ("OAKSEND_AMBIGUOUS_POLICY", "hold", "ambiguous_policy", "hold"),
        ("OAKSEND_DEFAULT_RATE_PER_S", "25", "default_rate_per_s", 25.0),
        ("OAKSEND_DEFAULT_BURST", "10", "default_burst", 10),
        ("OAKSEND_LEASE_S", "12", "lease_s", 12.0),
        ("OAKSEND_DISPATCH_BATCH_SIZE", "50", "dispatch_batch_size", 50),
        ("OAKSEND_QUEUE_NAME", "sms", "queue_name", "sms"),
        ("oaksend_queue_name", "lower", "queue_name", "lower"),
        ("NEWOAKS_BASE_URL", "http://127.0.0.1:8080", "newoaks_base_url", "http://127.0.0.1:8080"),
        ("NEWOAKS_BASE_URL", "   ", "newoaks_base_url", None),  # blank means unset
    ],
)
def test_environment_variables(monkeypatch: pytest.MonkeyPatch, env: str, value: str, attribute: str,
                               expected: Any) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(make(), attribute) == expected


def test_region_picks_the_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWOAKS_REGION", "eu")
    assert make().base_url == "https://euapi.hottask.com"


def test_newoaks_base_url_wins_over_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWOAKS_REGION", "eu")
    monkeypatch.setenv("NEWOAKS_BASE_URL", "https://sms.example.com/")
    assert make().base_url == "https://sms.example.com"


def test_explicit_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from-env.db")
    assert make(database_url="sqlite:///explicit.db").database_url == "sqlite:///explicit.db"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OAKSEND_MAX_ATTEMPTS=8\nNEWOAKS_REGION=eu\n")
    s = Settings(_env_file=str(env_file))  # type: ignore[call-arg]
    assert (s.max_attempts, s.newoaks_region) == (8, "eu")


# -- CODE_OVERRIDES --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"30007": "retry"}', {30007: "retry"}),
        ('{"500": "FINAL", "21610": "final", "502": "Ambiguous"}', {500: "final", 21610: "final", 502: "ambiguous"}),
        ('{"200": "sent"}', {200: "sent"}),
        ("{}", {}),
    ],
)
def test_code_overrides_parse(monkeypatch: pytest.MonkeyPatch, raw: str, expected: dict[int, str]) -> None:
    monkeypatch.setenv("OAKSEND_CODE_OVERRIDES", raw)
    assert make().code_overrides == expected


def test_code_overrides_accept_the_bare_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODE_OVERRIDES", '{"30003": "final"}')
    assert make().code_overrides == {30003: "final"}


def test_code_overrides_given_as_a_dict() -> None:
    assert make(code_overrides={429: "FINAL"}).code_overrides == {429: "final"}


def test_empty_code_overrides_mean_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAKSEND_CODE_OVERRIDES", "")
    assert load_settings(_env_file=None).code_overrides == {}


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"30007": "retry"',
        '{"30007": "maybe"}',
        '{"30007": null}',
        '{"abc": "final"}',
        "[1, 2]",
        '"final"',
    ],
)
def test_bad_code_overrides_are_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("OAKSEND_CODE_OVERRIDES", raw)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    text = str(info.value)
    assert "CODE_OVERRIDES" in text
    assert "\n" not in text


# -- the API key -----------------------------------------------------------------------------------
def test_api_key_returns_a_usable_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWOAKS_API_KEY", "sk-live-0123456789")
    s = make()
    assert s.api_key() == "sk-live-0123456789"
    assert "sk-live-0123456789" not in repr(s) and "sk-live-0123456789" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "not set"),
        ("", "not set"),
        ("   ", "not set"),
        ("<your-secret-key>", "not set"),
        ("<YOUR-SECRET-KEY>", "not set"),
        ("changeme", "not set"),
        (" sk-live-0123456789", "spaces"),
        ("sk-live-0123456789 ", "spaces"),
        ("sk-live-0123456789\n", "spaces"),
    ],
)
def test_unusable_api_key_is_a_config_error_without_the_key(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                                            says: str) -> None:
    if value is not None:
        monkeypatch.setenv("NEWOAKS_API_KEY", value)
    s = make()
    with pytest.raises(ConfigError) as info:
        s.api_key()
    text = str(info.value)
    assert "NEWOAKS_API_KEY" in text and says in text
    assert "\n" not in text
    if value and value.strip():
        assert value.strip() not in text


def test_settings_build_without_a_key_for_producers() -> None:
    # Producers and the CLI do not need the key; only workers ask for it.
    assert make().newoaks_api_key is None


# -- load_settings: one-line errors ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("OAKSEND_MAX_ATTEMPTS", "abc", "MAX_ATTEMPTS"),
        ("OAKSEND_MAX_ATTEMPTS", "0", "MAX_ATTEMPTS"),
        ("MAX_ATTEMPTS", "-3", "MAX_ATTEMPTS"),
        ("NEWOAKS_REGION", "asia", "NEWOAKS_REGION"),
        ("OAKSEND_AMBIGUOUS_POLICY", "maybe", "AMBIGUOUS_POLICY"),
        ("OAKSEND_DEFAULT_RATE_PER_S", "0", "DEFAULT_RATE_PER_S"),
        ("OAKSEND_DEFAULT_BURST", "1.5", "DEFAULT_BURST"),
        ("OAKSEND_BACKOFF_BASE_S", "-1", "BACKOFF_BASE_S"),
        ("OAKSEND_READ_TIMEOUT_S", "soon", "READ_TIMEOUT_S"),
        ("OAKSEND_DISPATCH_BATCH_SIZE", "5000", "DISPATCH_BATCH_SIZE"),
        ("OAKSEND_WORKER_HEARTBEAT_TTL_S", "2.5", "WORKER_HEARTBEAT_TTL_S"),  # beats are every second
    ],
)
def test_load_settings_turns_a_bad_value_into_one_line(monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                                                       named: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    text = str(info.value)
    assert text.startswith(f"{named}: ")
    assert "\n" not in text
    assert "pydantic" not in text.lower()


def test_load_settings_with_good_values() -> None:
    s = load_settings(_env_file=None, max_attempts=3)
    assert isinstance(s, Settings) and s.max_attempts == 3


def test_load_settings_error_does_not_echo_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWOAKS_API_KEY", "sk-live-0123456789")
    monkeypatch.setenv("OAKSEND_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert "sk-live-0123456789" not in str(info.value)


# -- the base URL: https unless loopback or explicitly allowed -------------------------------------
@pytest.mark.parametrize(
    "url",
    ["http://api.example.com", "http://sandbox:8099", "http://10.0.0.5:8099", "http://0.0.0.0:8099",
     "http://127.0.0.1.nip.io", "http://[2001:db8::1]:80", "ftp://usapi.hottask.com", "usapi.hottask.com"],
)
def test_a_base_url_that_would_send_the_key_in_cleartext_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                    url: str) -> None:
    monkeypatch.setenv("NEWOAKS_BASE_URL", url)
    monkeypatch.setenv("NEWOAKS_API_KEY", "sk-live-0123456789")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    text = str(info.value)
    assert text.startswith("NEWOAKS_BASE_URL: ") and "\n" not in text
    assert "sk-live-0123456789" not in text


@pytest.mark.parametrize(
    "url",
    ["https://usapi.hottask.com", "https://sms.example.com:8443/", "http://127.0.0.1:8099", "http://127.8.9.10",
     "http://localhost:8099", "http://LOCALHOST", "http://[::1]:8099"],
)
def test_https_and_loopback_base_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("NEWOAKS_BASE_URL", url)
    assert load_settings(_env_file=None).base_url == url.rstrip("/")


@pytest.mark.parametrize("name", ["OAKSEND_ALLOW_INSECURE_BASE_URL", "ALLOW_INSECURE_BASE_URL"])
def test_an_insecure_base_url_can_be_allowed_explicitly(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("NEWOAKS_BASE_URL", "http://sandbox:8099")
    monkeypatch.setenv(name, "1")
    s = load_settings(_env_file=None)
    assert s.allow_insecure_base_url is True and s.base_url == "http://sandbox:8099"


def test_insecure_is_not_allowed_by_default() -> None:
    assert make().allow_insecure_base_url is False
    from pydantic import ValidationError as PydanticValidationError

    with pytest.raises(PydanticValidationError, match="not https"):
        make(newoaks_base_url="http://api.example.com")


# -- store passwords never in a repr ----------------------------------------------------------------
DB_PW, REDIS_PW = "CANARY-db-pw-4e1f", "CANARY-redis-pw-9b2c"


def test_repr_and_str_mask_the_store_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://app:{DB_PW}@db.internal:5432/app")
    monkeypatch.setenv("REDIS_URL", f"redis://default:{REDIS_PW}@redis.internal:6379/0")
    monkeypatch.setenv("NEWOAKS_API_KEY", "sk-live-0123456789")
    s = load_settings(_env_file=None)
    assert s.database_url.endswith(f"{DB_PW}@db.internal:5432/app")  # the value itself is intact
    for shown in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert DB_PW not in shown and REDIS_PW not in shown and "sk-live-0123456789" not in shown
        assert "postgresql+psycopg://app:***@db.internal:5432/app" in shown
        assert "redis://default:***@redis.internal:6379/0" in shown
    assert set(s.secrets()) == {DB_PW, REDIS_PW, "sk-live-0123456789"}


def test_a_password_in_the_query_string_is_masked_too() -> None:
    s = make(database_url=f"postgresql+psycopg:///app?host=/run/pg&password={DB_PW}")
    assert DB_PW not in repr(s) and "password=***" in repr(s)
    assert s.secrets() == (DB_PW,)
