"""Operator safety, the small items: terminal output escapes control characters, the scheduler logs like the
other processes, `.env` only from OAKSEND_ENV_FILE, clear errors for a missing serial, a warning for an
http:// API, a base URL's password masked in the settings repr, recipient keys never logged raw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oaksend.errors import ConfigError
from oaksend.worker.cli import main
from oaksend.worker.cli.render import printable
from oaksend.worker.logs import mask_key
from oaksend.worker.settings import Settings, load_settings
from tests.support import API_KEY, CHATBOT, REDIS_URL, ROOT

ESCAPES = "\x1b[2J\x1b]0;owned\x07\r\x9b31m\u202e"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_", "DATABASE_", "REDIS_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# -- terminal output ------------------------------------------------------------------------------
def test_printable_escapes_every_control_character() -> None:
    assert printable(f"a{ESCAPES}b\nc") == "a\\x1b[2J\\x1b]0;owned\\x07\\r\\x9b31m\\u202eb\\nc"
    assert printable("Rappel : rendez-vous à 9h15 ✅") == "Rappel : rendez-vous à 9h15 ✅"
    assert printable(None) == ""


def test_show_prints_a_hostile_text_escaped(tmp_path: Path, redis_url: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    common = ["--database-url", url, "--redis-url", redis_url]
    assert main([*common, "migrate"]) == 0
    capsys.readouterr()
    assert main([*common, "send", "--chatbot", CHATBOT, "--to", "+14155550123", "--text", f"hi{ESCAPES}there"]) == 0
    mid = capsys.readouterr().out.strip()
    assert main([*common, "show", mid]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\u202e" not in shown
    assert "hi\\x1b[2J\\x1b]0;owned\\x07\\r\\x9b31m\\u202ethere" in shown
    assert main([*common, "list"]) == 0  # a table: cells escaped too
    assert "\x1b" not in capsys.readouterr().out


# -- settings: .env, repr, insecure URL -----------------------------------------------------------
def test_a_dotenv_in_the_working_directory_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "OAKSEND_DATABASE_URL", "OAKSEND_ENV_FILE", "OAKSEND_LEASE_S"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///another-application.db\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().database_url == "sqlite:///oaksend.db"
    named = tmp_path / "oaksend.env"
    named.write_text("DATABASE_URL=sqlite:///named.db\nOAKSEND_LEASE_S=7\n")
    monkeypatch.setenv("OAKSEND_ENV_FILE", str(named))
    settings = load_settings()
    assert (settings.database_url, settings.lease_s) == ("sqlite:///named.db", 7.0)
    monkeypatch.setenv("OAKSEND_LEASE_S", "9")  # the environment wins over the file
    assert load_settings().lease_s == 9.0
    monkeypatch.setenv("OAKSEND_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError, match="OAKSEND_ENV_FILE"):
        load_settings()


def test_a_base_url_password_is_masked_in_the_repr() -> None:
    s = Settings(newoaks_base_url="https://user:hunter22@api.example.com", _env_file=None)  # type: ignore[call-arg]
    assert "hunter22" not in repr(s) and "https://user:***@api.example.com" in repr(s)
    assert s.insecure_warnings() == []


def test_an_http_base_url_or_the_override_is_warned_of() -> None:
    loopback = Settings(newoaks_base_url="http://127.0.0.1:8099", _env_file=None)  # type: ignore[call-arg]
    assert [w.split(" ", 2)[:2] for w in loopback.insecure_warnings()] == [["NEWOAKS_BASE_URL", "http://127.0.0.1:8099"]]
    override = Settings(newoaks_base_url="http://sandbox:8099", allow_insecure_base_url=True,  # type: ignore[call-arg]
                        _env_file=None)
    assert len(override.insecure_warnings()) == 2
    assert "OAKSEND_ALLOW_INSECURE_BASE_URL" in override.insecure_warnings()[1]


@pytest.mark.slow
def test_a_worker_logs_the_warning_at_start(tmp_path: Path, redis_url: str) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/o.db", REDIS_URL=redis_url, NEWOAKS_API_KEY=API_KEY,
                    NEWOAKS_BASE_URL="http://user:s3cretpw@127.0.0.1:9", OAKSEND_QUEUE_NAME="oaksend-low-items")
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", "worker", "--concurrency", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while "is not https" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text(errors="replace")
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    assert "WARNING oaksend.worker NEWOAKS_BASE_URL http://user:***@127.0.0.1:9 is not https" in text
    assert "s3cretpw" not in text


# -- the scheduler's logs -------------------------------------------------------------------------
@pytest.mark.slow
def test_the_scheduler_logs_json_and_redacts(tmp_path: Path) -> None:
    # A database that does not answer (port 1), with a password: the scheduler logs its outage, in JSON.
    env = clean_env(DATABASE_URL="postgresql+psycopg://oaksend:sched-pw-1234@127.0.0.1:1/x",
                    REDIS_URL=REDIS_URL, OAKSEND_LOG_FORMAT="json")
    proc = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", "scheduler", "--tick-s", "0.2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    lines = [line for line in err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("started" in r["msg"] for r in records)
    assert any(r["level"] == "WARNING" and "unavailable" in r["msg"] for r in records)
    assert "sched-pw-1234" not in err


def test_recipient_keys_are_logged_as_digests() -> None:
    assert mask_key("+14155550123") == "+1415****123"
    shown = mask_key("jane.doe@example.com")
    assert shown.startswith("key#") and "jane" not in shown and shown == mask_key("jane.doe@example.com")
    assert shown != mask_key("john.doe@example.com")


# -- the CLI: a missing serial ----------------------------------------------------------------------
@pytest.mark.parametrize("action", ["pause", "resume", "set-limit"])
def test_chatbot_actions_without_a_serial_fail_in_one_line(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database-url", "sqlite:///nowhere/never.db", "chatbot", action]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("oaksend: serial_number:") and f"chatbot {action}" in err
