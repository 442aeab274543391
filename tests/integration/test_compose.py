"""docker-compose.yml runs the README's commands, safely by default, and validates.

No container engine runs here: `docker-compose config` (Debian's docker-compose
package) checks the file, and the rest is read from the YAML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from oaksend.worker.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def oaksend_services() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in SERVICES.items() if "build" in svc}


def long_running() -> list[str]:
    return sorted(n for n, cmd in oaksend_services().items() if cmd[0] in ("dispatcher", "worker", "scheduler"))


def env_of(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[name].get("environment") or {}).items()}


def test_compose_runs_every_process_of_a_deployment() -> None:
    commands = {cmd[0] for cmd in oaksend_services().values()}
    assert commands == {"migrate", "dispatcher", "worker", "sandbox", "scheduler"}
    assert {"redis", "postgres"} <= set(SERVICES)
    dispatchers = [n for n, cmd in oaksend_services().items() if cmd[0] == "dispatcher" and not SERVICES[n].get("profiles")]
    assert len(dispatchers) == 2  # one active, one standby


@pytest.mark.parametrize("service", sorted(oaksend_services()))
def test_each_command_is_a_valid_oaksend_command_shown_in_the_readme(service: str) -> None:
    command = oaksend_services()[service]
    args, extra = build_parser().parse_known_args(command)
    assert args.command == command[0]
    if command[0] != "sandbox":
        assert extra == []
    readme = (ROOT / "README.md").read_text()
    assert f"oaksend {' '.join(command)}" in readme


def test_the_real_api_is_the_default_and_the_sandbox_is_dev_only() -> None:
    assert SERVICES["sandbox"].get("profiles") == ["dev"]
    for name in long_running():
        env = env_of(name)
        if SERVICES[name].get("profiles") == ["dev"]:
            # The dev worker carries the sandbox's own URL and key, never the user's.
            assert env["NEWOAKS_BASE_URL"] == "http://sandbox:8099"
            assert env["NEWOAKS_API_KEY"] == "sandbox-key"
            continue
        # Default services: nothing points at the sandbox, the key and region come from the user.
        assert "sandbox" not in " ".join(env.values())
        if "NEWOAKS_API_KEY" in env:
            assert env["NEWOAKS_API_KEY"] == "${NEWOAKS_API_KEY:-}"
            assert env["NEWOAKS_REGION"] == "${NEWOAKS_REGION:-us}"
            assert env["NEWOAKS_BASE_URL"] == "${NEWOAKS_BASE_URL:-}"
    # Dispatchers and the scheduler never call the API: they do not get the key.
    for name in long_running():
        if oaksend_services()[name][0] != "worker":
            assert "NEWOAKS_API_KEY" not in env_of(name)


@pytest.mark.parametrize("service", long_running())
def test_every_long_running_service_is_checked_by_oaksend_health(service: str) -> None:
    svc = SERVICES[service]
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "oaksend", "health"]
    args = build_parser().parse_args(test[2:])
    assert args.command == "health"
    parts = set(args.only.split(","))
    assert {"database", "redis"} <= parts
    if svc["command"][0] == "worker":
        assert "workers" in parts and args.this_host
    elif svc["command"][0] == "dispatcher":
        assert "dispatcher" in parts
    else:
        return  # the scheduler serves no metrics
    # Metrics served inside the compose network, on the port the environment names.
    port = env_of(service)["OAKSEND_METRICS_PORT"]
    assert port in [str(p) for p in svc["expose"]]
    assert env_of(service)["OAKSEND_METRICS_HOST"] == "0.0.0.0"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_workers_stop_grace_exceeds_the_longest_send() -> None:
    from oaksend.worker.settings import Settings

    s = Settings(_env_file=None)  # type: ignore[call-arg]
    longest_send_s = s.max_token_wait_s + s.connect_timeout_s + s.read_timeout_s
    for name in long_running():
        if oaksend_services()[name][0] == "worker":
            assert _seconds(SERVICES[name]["stop_grace_period"]) > longest_send_s + 10


def test_redis_keeps_its_data_and_never_evicts() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])


def test_dockerfile_pins_its_base_runs_as_non_root_and_installs_the_wheel() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert "pip wheel" in text and re.search(r"pip install /dist/\*\.whl", text)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))


def test_docker_compose_validates_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWOAKS_", "OAKSEND_"))}
    for profile in ([], ["--profile", "dev"]):
        out = subprocess.run([exe, *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 0, out.stderr
