"""The sandbox as a process: flags, environment, signals, record file, logs, in-process thread."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from oaksend.sandbox import Config, SandboxControl, SandboxThread, running_sandbox
from tests.sandbox.helpers import KEY, PHONE, ROOT, send


def test_sigterm_writes_the_record_file_and_exits_0(sandbox_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record_file = tmp_path / "records.jsonl"
    sandbox = sandbox_factory("--api-key", KEY, "--record-file", str(record_file))
    with httpx.Client(base_url=sandbox.base_url) as client:
        send(client, message="a")
        send(client, message="b", key="nope")
        # An open keep-alive connection must not hold the exit up.
        assert sandbox.stop() == 0

    lines = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert [(r["seq"], r["message"], r["status"]) for r in lines] == [(1, "a", 200), (2, "b", 401)]
    assert KEY not in record_file.read_text()


def test_sigint_while_a_request_hangs(sandbox_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record_file = tmp_path / "records.jsonl"
    sandbox = sandbox_factory("--api-key", KEY, "--p-hang", "1", "--hang-s", "60", "--record-file", str(record_file))
    with httpx.Client(base_url=sandbox.base_url) as client:
        with pytest.raises(httpx.ReadTimeout):
            send(client, timeout=0.3)
    assert sandbox.stop(signal.SIGINT) == 0
    assert json.loads(record_file.read_text())["status"] == "hang"


def test_environment_configures_and_flags_win(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    env = {"SANDBOX_API_KEY": "env-key", "SANDBOX_P_503": "1", "SANDBOX_P_500": "0", "SANDBOX_LIMITS": "SN1=5:1,SN2=20:2"}
    sandbox = sandbox_factory("--p-500", "1", "--p-503", "0", env=env)
    with SandboxControl(sandbox.base_url, "env-key") as control, httpx.Client(base_url=sandbox.base_url) as client:
        config = control.config()
        assert send(client, key="env-key").status_code == 500
    assert (config["p_500"], config["p_503"]) == (1.0, 0.0)
    assert config["limits"] == {"SN1": "5:1", "SN2": "20:2"}
    assert config["port"] != 0


def test_newoaks_api_key_is_not_the_sandboxs(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    # oaksend's key (perhaps a real one) in the environment is not accepted, and opens no control endpoint.
    sandbox = sandbox_factory(env={"NEWOAKS_API_KEY": "project-key"})
    with httpx.Client(base_url=sandbox.base_url) as client:
        assert send(client, key="project-key").status_code == 401
        assert send(client, key="sandbox-key").status_code == 200
        assert client.get("/_sandbox/requests", headers={"X-Sandbox-Key": "project-key"}).status_code == 401


def test_repeated_limit_flags(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sandbox = sandbox_factory("--limit", "SN1=5", "--limit", "SN2=0.5:3", "--default-limit", "2:1", env={"SANDBOX_LIMITS": "SN9=1"})
    with SandboxControl(sandbox.base_url) as control:  # started without a key: the default one, on loopback
        config = control.config()
    assert (config["limits"], config["default_limit"]) == ({"SN1": "5:1", "SN2": "0.5:3"}, "2:1")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--p-503", "1.5"], {}, "probability"),
        (["--p-503", "0.6", "--p-500", "0.6"], {}, "add up"),
        (["--limit", "SN1"], {}, "SERIAL=RATE"),
        ([], {"SANDBOX_LATENCY": "gamma:3"}, "SANDBOX_LATENCY"),
    ],
)
def test_invalid_configuration_exits_2_with_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oaksend.sandbox", "--port", "0", *args],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


def test_debug_log_masks_numbers_and_never_shows_the_key(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sandbox = sandbox_factory("--api-key", KEY, "--log-level", "DEBUG")
    with httpx.Client(base_url=sandbox.base_url) as client:
        send(client)
        send(client, key="wrong")
        client.post("/_sandbox/config", json={"api_key": "another-secret"}, headers={"X-Sandbox-Key": KEY})
    assert sandbox.stop() == 0
    log = sandbox.log()
    assert "to=+1555****111" in log
    assert PHONE not in log and KEY not in log and "another-secret" not in log


def test_in_process_thread() -> None:
    with running_sandbox(api_key=KEY, p_503=1.0) as base_url, httpx.Client(base_url=base_url) as client:
        assert send(client).status_code == 503
    with SandboxThread(Config(port=0, api_key=KEY)) as sandbox, httpx.Client(base_url=sandbox.base_url) as client:
        assert send(client).status_code == 200
        assert sandbox.app.records.since(0)[0]["to_phone_number"] == PHONE


def test_in_process_thread_reports_a_bind_failure() -> None:
    with SandboxThread(Config(port=0)) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            SandboxThread(Config(port=port)).start()


def test_listens_on_loopback_unless_told_otherwise(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    # The sandbox accepts any number and logs requests: never reachable from the network by default.
    assert Config().host == "127.0.0.1"
    assert sandbox_factory().base_url.startswith("http://127.0.0.1:")
    assert sandbox_factory(env={"SANDBOX_HOST": "::1"}).base_url.startswith("http://[::1]:")
    assert sandbox_factory("--host", "127.0.0.2").base_url.startswith("http://127.0.0.2:")
