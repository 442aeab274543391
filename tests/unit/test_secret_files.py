"""Secrets read from files (compose and Kubernetes secrets): the values land where the settings use
them, and no error, repr or output ever shows them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from oaksend.errors import ConfigError
from oaksend.worker.settings import Settings, load_settings


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def test_the_api_key_comes_from_its_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("nk-FROM-FILE-0001\n")
    s = settings(NEWOAKS_API_KEY_FILE=str(key_file))
    assert s.api_key() == "nk-FROM-FILE-0001"
    assert "nk-FROM-FILE" not in repr(s) and "nk-FROM-FILE" not in str(dict(s.__repr_args__()))
    assert "nk-FROM-FILE-0001" in s.secrets()  # redacted from logs like a key from the environment


def test_a_key_in_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("nk-FROM-FILE-0001")
    assert settings(NEWOAKS_API_KEY="nk-FROM-ENV-0002", NEWOAKS_API_KEY_FILE=str(key_file)).api_key() == \
        "nk-FROM-ENV-0002"


def test_the_database_password_goes_into_the_url(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("p@ss:w/rd%1\n")
    s = settings(DATABASE_URL="postgresql://oaksend@db:5432/oaksend", OAKSEND_DATABASE_PASSWORD_FILE=str(pw))
    url = make_url(s.database_url)
    assert (url.username, url.password, url.host, url.database) == ("oaksend", "p@ss:w/rd%1", "db", "oaksend")
    assert "p@ss" not in repr(s)
    assert "p@ss:w/rd%1" in s.secrets()


@pytest.mark.parametrize("content", [None, "", "\n"])
@pytest.mark.parametrize("variable", ["NEWOAKS_API_KEY_FILE", "OAKSEND_DATABASE_PASSWORD_FILE"])
def test_a_missing_or_empty_file_refuses_to_start_naming_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, content: str | None) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv(variable, str(path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://oaksend@db/oaksend")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message and "\n" not in message
