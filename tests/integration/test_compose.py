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
        # Default services: nothing points at the sandbox, the key and region come from the user,
        # the key as a file (a compose secret), never as a value in the environment.
        assert "sandbox" not in " ".join(env.values())
        assert "NEWOAKS_API_KEY" not in env
        if "NEWOAKS_API_KEY_FILE" in env:
            assert env["NEWOAKS_API_KEY_FILE"] == "/run/secrets/newoaks_api_key"
            assert SERVICES[name]["secrets"] == ["newoaks_api_key"]
            assert env["NEWOAKS_REGION"] == "${NEWOAKS_REGION:-us}"
            assert env["NEWOAKS_BASE_URL"] == "${NEWOAKS_BASE_URL:-}"
    assert COMPOSE["secrets"]["newoaks_api_key"]["file"] == "${NEWOAKS_API_KEY_FILE:-/dev/null}"
    # Dispatchers and the scheduler never call the API: they get neither the key nor its file.
    for name in long_running():
        if oaksend_services()[name][0] != "worker":
            assert not {"NEWOAKS_API_KEY", "NEWOAKS_API_KEY_FILE"} & set(env_of(name))
            assert "secrets" not in SERVICES[name]


def test_no_password_is_written_in_the_file() -> None:
    """The database password is generated into a volume on first start and read from a file."""
    assert "POSTGRES_PASSWORD" not in SERVICES["postgres"]["environment"]
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/oaksend-db/password"
    assert SERVICES["postgres"]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    for name in oaksend_services():
        env = env_of(name)
        if "DATABASE_URL" in env:
            userinfo = env["DATABASE_URL"].split("//", 1)[1].split("@")[0]
            assert ":" not in userinfo  # a user, no password
            assert env["OAKSEND_DATABASE_PASSWORD_FILE"] == "/run/oaksend-db/password"
            assert "dbsecret:/run/oaksend-db:ro" in SERVICES[name]["volumes"]


def test_the_generated_password_script_makes_a_password_once(tmp_path: Path) -> None:
    script = SERVICES["secrets"]["entrypoint"][2].replace("$$", "$").replace("/run/oaksend-db", str(tmp_path))
    subprocess.run(["sh", "-c", script], check=True, timeout=10)
    first = (tmp_path / "password").read_text()
    assert re.fullmatch(r"[0-9a-f]{48}", first), first
    subprocess.run(["sh", "-c", script], check=True, timeout=10)
    assert (tmp_path / "password").read_text() == first  # kept: PostgreSQL's data was made with it


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
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base.group(1))
    assert "pip wheel" in text and re.search(r"pip install --no-deps /dist/\*\.whl", text)
    # Dependencies exactly as locked, each file checked against its hash.
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in text
    lock = (ROOT / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, re.M)
    assert {"celery", "httpx", "sqlalchemy", "alembic", "phonenumbers", "tzdata"} <= {p.lower() for p in pins}
    assert lock.count("--hash=sha256:") >= len(pins)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))


def test_every_runtime_dependency_has_an_upper_bound() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unbounded = [d for d in deps if "<" not in d and not d.startswith("tzdata")]  # tzdata: newest rules win
    assert unbounded == []


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "*.db"} <= set(ignored)


def test_docker_compose_validates_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWOAKS_", "OAKSEND_"))}
    for profile in ([], ["--profile", "dev"]):
        out = subprocess.run([exe, *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 0, out.stderr


def test_the_key_is_in_no_rendered_configuration(tmp_path: Path) -> None:
    """`docker-compose config` (what `docker inspect` would show) names the key's file, never the key."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (apt-get install docker-compose)")
    key_file = tmp_path / "newoaks_api_key"
    key_file.write_text("nk-COMPOSE-SECRET-4242\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWOAKS_", "OAKSEND_"))}
    out = subprocess.run([exe, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "NEWOAKS_API_KEY_FILE": str(key_file)})
    assert out.returncode == 0, out.stderr
    assert str(key_file) in out.stdout and "COMPOSE-SECRET" not in out.stdout
