"""The dashboard as a real process (`oaksend web`) on real stores, and a real headless Chromium.

In CI (CI=true) a missing browser fails the run; elsewhere it skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import CI, REDIS_URL, ROOT, flush_redis, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery staple"


def web_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update({"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1", **extra})
    return env


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@dataclass
class WebServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client of this server, closed when the test ends."""
        client = httpx.Client(base_url=self.url, timeout=10, **kwargs)
        self.clients.append(client)
        return client

    def login(self, name: str, password: str = PASSWORD) -> httpx.Client:
        """An HTTP client logged in as `name` (the CSRF token from the login form, as a browser would)."""
        client = self.client()
        token = csrf_of(client.get("/login").text)
        r = client.post("/login", data={"csrf": token, "name": name, "password": password})
        assert r.status_code == 303 and r.headers["location"] == "/", r.text[:500]
        return client


def csrf_of(html: str) -> str:
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
def start_web(database_url: str, tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    """Start `oaksend web` (after adding the users given as name=role) and wait until it answers."""
    flush_redis()  # sessions and login brakes of earlier tests (before this test starts anything)
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[WebServer] = []

    def start(users: dict[str, str] | None = None, **extra: str) -> WebServer:
        env = web_env(database_url, **extra)
        for name, role in (users or {}).items():
            done = cli(env, "web", "add-user", name, "--role", role, stdin=PASSWORD + "\n")
            assert done.returncode == 0, done.stderr
        port = free_port()
        log = tmp_path / f"web-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", "web", "--port", str(port)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"oaksend web exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                return httpx.get(url + "/login", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, 0.1, "oaksend web to answer")
        servers.append(WebServer(url, proc, log))
        return servers[-1]

    yield start
    for server in servers:
        for client in server.clients:
            client.close()
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the browser tests save each page (OAKSEND_TEST_SCREENSHOTS names a folder to keep them)."""
    folder = Path(os.environ.get("OAKSEND_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Selenium through Debian's chromedriver (nothing downloaded)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
