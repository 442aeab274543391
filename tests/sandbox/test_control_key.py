"""The control endpoints show every number and text: they need the sandbox's key, and a sandbox reachable
from other hosts needs a key of its own."""

from __future__ import annotations

import httpx
import pytest

from oaksend.sandbox import SandboxControl, load_config, running_sandbox
from oaksend.sandbox.exceptions import ConfigError
from tests.sandbox.helpers import KEY, send

CONTROL = [("GET", "/_sandbox/requests"), ("GET", "/_sandbox/stats"), ("POST", "/_sandbox/reset"),
           ("GET", "/_sandbox/config"), ("POST", "/_sandbox/config"), ("GET", "/_sandbox/script"),
           ("POST", "/_sandbox/script")]


@pytest.mark.parametrize("key", [None, "", "wrong", KEY + "x", "sandbox-key"])
def test_every_control_endpoint_refuses_without_the_key(key: str | None) -> None:
    headers = {} if key is None else {"X-Sandbox-Key": key}
    with running_sandbox(api_key=KEY) as base_url, httpx.Client(base_url=base_url, headers=headers) as client:
        assert send(client).status_code == 200
        for method, path in CONTROL:
            response = client.request(method, path, json={"p_503": 1.0} if path.endswith("config") else None)
            assert response.status_code == 401, (method, path)
            assert "X-Sandbox-Key" in response.json()["error"] and "+1555" not in response.text
        assert client.get("/_sandbox/health").json() == {"ok": True}  # says nothing: open
        assert send(client).status_code == 200  # nothing was changed by the refused calls
    with running_sandbox(api_key=KEY) as base_url, SandboxControl(base_url, KEY) as control:
        assert control.requests() == []


def test_the_control_key_is_the_one_it_started_with() -> None:
    with running_sandbox(api_key=KEY) as base_url, SandboxControl(base_url, KEY) as control:
        control.configure(api_key="rotated-key")
        with httpx.Client(base_url=base_url) as client:
            assert send(client, key="rotated-key").status_code == 200
            assert client.get("/_sandbox/stats", headers={"X-Sandbox-Key": "rotated-key"}).status_code == 401
        assert control.stats()["total"] == 1


def test_a_host_other_than_loopback_needs_a_key_of_its_own() -> None:
    for host in ("0.0.0.0", "10.0.0.5", "sandbox"):
        with pytest.raises(ConfigError, match="not loopback"):
            load_config(["--host", host], {})
        assert load_config(["--host", host, "--api-key", "k"], {}).api_key == "k"
        assert load_config(["--host", host], {"SANDBOX_API_KEY": "e"}).api_key == "e"
    for host in ("127.0.0.1", "::1", "localhost"):
        assert load_config(["--host", host], {}).api_key == "sandbox-key"
