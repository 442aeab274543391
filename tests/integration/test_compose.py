"""docker-compose.yml runs the same oaksend commands as the README and the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from oaksend.worker.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def oaksend_services() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in COMPOSE["services"].items() if "build" in svc}


def test_compose_runs_every_process_of_a_deployment() -> None:
    commands = {cmd[0] for cmd in oaksend_services().values()}
    assert commands == {"migrate", "dispatcher", "worker", "sandbox", "scheduler"}
    assert {"redis", "postgres"} <= set(COMPOSE["services"])


@pytest.mark.parametrize("service", sorted(oaksend_services()))
def test_each_command_is_a_valid_oaksend_command_shown_in_the_readme(service: str) -> None:
    command = oaksend_services()[service]
    args, extra = build_parser().parse_known_args(command)
    assert args.command == command[0]
    if command[0] != "sandbox":
        assert extra == []
    readme = (ROOT / "README.md").read_text()
    assert f"oaksend {' '.join(command)}" in readme


def test_docker_compose_validates_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (apt-get install docker-compose)")
    out = subprocess.run([exe, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
