"""Fixtures that run the sandbox as a real subprocess, the way the project uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sandbox.helpers import KEY, SandboxProcess, start_sandbox


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Any]:
    """Starts dedicated sandboxes (for flags, env and signals); stops them after the test."""
    started: list[SandboxProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> SandboxProcess:
        started.append(start_sandbox(tmp_path, *args, env=env))
        return started[-1]

    yield factory
    for sandbox in started:
        if not sandbox.stopped:
            sandbox.stop()


@pytest.fixture(scope="session")
def shared_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """One sandbox process for the tests that only need runtime config (fast)."""
    sandbox = start_sandbox(tmp_path_factory.mktemp("shared"), "--api-key", KEY, "--seed", "7")
    yield sandbox
    assert sandbox.stop() == 0


@pytest.fixture(scope="session")
def shared_client(shared_sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    # One client for the session: building an httpx.Client costs tens of ms (its SSL context).
    with httpx.Client(base_url=shared_sandbox.base_url, timeout=5.0, headers={"X-Sandbox-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="session")
def baseline_config(shared_client: httpx.Client) -> dict[str, Any]:
    config = shared_client.get("/_sandbox/config").json()
    for startup_only in ("host", "port", "log_level"):
        config.pop(startup_only)
    return config


@pytest.fixture
def client(shared_client: httpx.Client, baseline_config: dict[str, Any]) -> httpx.Client:
    """A client of the shared sandbox, reset and back at its start configuration."""
    # The key is not in the config the sandbox shows, so it is restored by hand.
    shared_client.post("/_sandbox/config", json={**baseline_config, "api_key": KEY}).raise_for_status()
    shared_client.post("/_sandbox/reset").raise_for_status()
    return shared_client


@pytest.fixture
def base_url(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")
