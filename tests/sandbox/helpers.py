"""Helpers of the sandbox tests: start the sandbox as a subprocess, talk to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-5f2c"  # distinctive, so a leak into a log or record is easy to spot
SEND_PATH = "/chat/Chatbot/SendTwilioMessage"
PHONE = "+15550001111"
SERIAL = "SN-TEST"


@dataclass
class SandboxProcess:
    base_url: str
    process: subprocess.Popen[str]
    log_path: Path

    @property
    def stopped(self) -> bool:
        assert self.process.stdout is not None
        return self.process.stdout.closed

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signals the process and returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=10)
        finally:
            assert self.process.stdout is not None
            self.process.stdout.close()

    def log(self) -> str:
        return self.log_path.read_text()


def start_sandbox(tmp_dir: Path, *args: str, env: dict[str, str] | None = None) -> SandboxProcess:
    """Starts ``python -m sandbox --port 0 ARGS`` and reads the port from its first line."""
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_") and k != "NEWOAKS_API_KEY"}
    clean_env["PYTHONPATH"] = str(ROOT)
    clean_env.update(env or {})
    log_path = tmp_dir / f"sandbox-{len(list(tmp_dir.glob('sandbox-*.log')))}.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "oaksend.sandbox", "--port", "0", *args],
            cwd=ROOT,
            env=clean_env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("sandbox listening on http://"):
        process.kill()
        process.wait()
        process.stdout.close()
        raise AssertionError(f"sandbox did not start: {line!r}\n{log_path.read_text()}")
    return SandboxProcess(line.strip().removeprefix("sandbox listening on "), process, log_path)


def send(
    client: httpx.Client,
    phone: str = PHONE,
    serial: str = SERIAL,
    message: str = "hello",
    key: str = KEY,
    **kwargs: Any,
) -> httpx.Response:
    body = {"SerialNumber": serial, "ToPhoneNumber": phone, "Message": message}
    return client.post(SEND_PATH, json=body, headers={"Authorization": key}, **kwargs)


def configure(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = client.post("/_sandbox/config", json=changes)
    assert response.status_code == 200, response.text
    return response.json()


def script(client: httpx.Client, responses: list[str], **key: str) -> None:
    response = client.post("/_sandbox/script", json={**key, "responses": responses})
    assert response.status_code == 200, response.text


def records(client: httpx.Client, since: int = 0) -> list[dict[str, Any]]:
    return client.get("/_sandbox/requests", params={"since": since}).json()
