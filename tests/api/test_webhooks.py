"""Status webhooks end to end: real workers send through the sandbox, `oaksend webhooks` delivers to a
real HTTP receiver that is down, then answers 500, then 200. Every event arrives, in order per message,
each acknowledged once, with a signature checked by the Standard Webhooks rules (written out here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.api.conftest import SERVER_SECRET
from tests.support import CHATBOT, free_port, wait_until


class Receiver:
    """A webhook receiver on `port`: answers 500 to its first `failures` requests, then 200."""

    def __init__(self, port: int, failures: int) -> None:
        self.port, self.failures = port, failures
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if len(owner.requests) < owner.failures else 200
                owner.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: base64 HMAC-SHA256 of `id.timestamp.body` under the secret's base64-decoded bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
        return False
    return any(sig.partition(",")[0] == "v1" and hmac.compare_digest(sig.partition(",")[2], expected)
               for sig in headers["webhook-signature"].split(" "))


@pytest.fixture
def admin(server: str, make_key: Callable[..., str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"authorization": f"Bearer {make_key(scopes=('admin',))}"},
                      timeout=30) as c:
        yield c


def _webhooks_process(api_settings: Any, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "oaksend.worker.cli", "webhooks", "--log-level", "INFO"],
        env={**env, "OAKSEND_KEY_HASH_SECRET": SERVER_SECRET, "OAKSEND_REDIS_PREFIX": api_settings.redis_prefix,
             "OAKSEND_WEBHOOK_RETRY_FIRST_S": "0.3", "OAKSEND_WEBHOOK_POLL_S": "0.05"},
        stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_every_event_delivered_in_order_signed(admin: httpx.Client, api_settings: Any, make_stack: Any,
                                               sandbox: Any, outbox: Any) -> None:
    port = free_port()
    hook = admin.post("/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "events": ["sent", "failed"]})
    assert hook.status_code == 201, hook.text
    secret, endpoint_id = hook.json()["secret"], hook.json()["id"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    failing = "+14155550999"
    sandbox.script(failing, ["400"])
    stack = make_stack(workers=1, OAKSEND_REDIS_PREFIX=api_settings.redis_prefix)
    phones = [f"+1415555{i:04d}" for i in range(10, 16)]
    ids = [admin.post("/messages", json={"chatbot": CHATBOT, "to": p, "text": "hook me"}).json()["id"]
           for p in [*phones, failing]]

    def states() -> list[str]:
        return [admin.get(f"/messages/{i}").json()["state"] for i in ids]

    wait_until(lambda: states() == ["sent"] * 6 + ["failed"], 60, what="outcomes")
    assert admin.post(f"/messages/{ids[-1]}/retry").status_code == 200  # then sent: failed, sent for one message
    wait_until(lambda: states() == ["sent"] * 7, 60, what="the retried message sent")
    log = (stack.tmp / "webhooks.log").open("wb")
    deliverer = _webhooks_process(api_settings, stack.env, log)
    try:
        # The receiver is down: the first try fails to connect and is retried later.
        wait_until(lambda: any(r.attempts for r in outbox.deliveries(endpoint_ids=[endpoint_id])), 30,
                   what="a failed first try")
        receiver = Receiver(port, failures=2)
        try:
            wait_until(lambda: (rows := outbox.deliveries(endpoint_ids=[endpoint_id])) and len(rows) == 8
                       and all(r.state == "delivered" for r in rows), 60, what="every delivery delivered")
            redo = admin.get(f"/webhooks/{endpoint_id}/deliveries", params={"state": "delivered"}).json()
            assert len(redo["deliveries"]) == 8
            again = redo["deliveries"][0]
            assert admin.post(f"/webhooks/{endpoint_id}/deliveries/{again['id']}/retry").json()["state"] == "pending"
            wait_until(lambda: len([q for q in receiver.requests if q[2] == 200]) == 9, 30, what="the redelivery")
        finally:
            receiver.close()
    finally:
        deliverer.terminate()
        deliverer.wait(10)
        log.close()
    received = receiver.requests
    assert all(verify(secret, h, b) for h, b, _ in received)
    assert not verify(secret.replace(secret[8], "A" if secret[8] != "A" else "B"), *received[0][:2])
    assert [status for *_, status in received[:2]] == [500, 500]
    acked = [(h["webhook-id"], json.loads(b)) for h, b, status in received if status == 200]
    first_acks = dict(acked[:8])
    assert len(first_acks) == 8 and acked[8][0] == f"evt_{again['event_id']}"  # each once, then the one redelivered
    by_message: dict[int, list[tuple[int, str]]] = {}
    for msg_id, payload in [(h["webhook-id"], json.loads(b)) for h, b, st in received]:
        by_message.setdefault(payload["data"]["id"], []).append((int(msg_id.removeprefix("evt_")), payload["type"]))
    for message_id, seen in by_message.items():
        assert [e for e, _ in seen] == sorted(e for e, _ in seen), (message_id, seen)  # order per message
    assert [t for _, t in dict.fromkeys(by_message[ids[-1]])] [:2] == ["message.failed", "message.sent"]
    sent = [p for p in first_acks.values() if p["type"] == "message.sent"]
    assert len(sent) == 7 and all(p["data"]["session_id"] is not None and p["data"]["chatbot"] == CHATBOT
                                  for p in sent)


def test_events_only_when_an_endpoint_is_registered(admin: httpx.Client, outbox: Any) -> None:
    from datetime import timedelta

    from sqlalchemy import func, select

    from oaksend.models.api_tables import WebhookEvent
    from oaksend.worker.clock import utcnow

    def events() -> list[tuple[int, str]]:
        with outbox.session() as s:
            return [(e.message_id, e.event) for e in s.scalars(select(WebhookEvent).order_by(WebhookEvent.id))]

    first = admin.post("/messages", json={"chatbot": CHATBOT, "to": "+14155550101", "text": "x"}).json()["id"]
    assert outbox.expire_overdue(utcnow() + timedelta(days=2)) == 1  # the dispatcher's expiry
    assert events() == []
    hook = admin.post("/webhooks", json={"url": "https://example.invalid/h", "events": ["expired"]}).json()
    second = admin.post("/messages", json={"chatbot": CHATBOT, "to": "+14155550102", "text": "x"}).json()["id"]
    assert outbox.expire_overdue(utcnow() + timedelta(days=2)) == 1
    assert events() == [(second, "expired")] and first != second
    assert outbox.fan_out(utcnow()) == 1
    assert [(d.message_id, d.state) for d in outbox.deliveries(endpoint_ids=[hook["id"]])] == [(second, "pending")]
    assert admin.delete(f"/webhooks/{hook['id']}").status_code == 204
    assert admin.get("/webhooks").json() == {"endpoints": []}
    with outbox.session() as s:
        assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 1


def test_endpoints_belong_to_their_tenant(server: str, make_key: Callable[..., str]) -> None:
    limited = make_key(scopes=("admin",), chatbots=[CHATBOT])
    with httpx.Client(base_url=server, headers={"authorization": f"Bearer {limited}"}) as a, \
            httpx.Client(base_url=server, headers={"authorization": f"Bearer {make_key(scopes=('admin',))}"}) as root:
        mine = a.post("/webhooks", json={"url": "https://example.invalid/a", "events": ["sent"]}).json()
        assert mine["chatbots"] == [CHATBOT]
        r = a.post("/webhooks", json={"url": "https://example.invalid/a", "events": ["sent"], "chatbots": ["zzzz1"]})
        assert r.status_code == 403 and r.json()["field"] == "chatbots"
        everyone = root.post("/webhooks", json={"url": "https://example.invalid/b", "events": ["failed"]}).json()
        assert [e["id"] for e in a.get("/webhooks").json()["endpoints"]] == [mine["id"]]
        assert a.post(f"/webhooks/{everyone['id']}/rotate").status_code == 404
        rotated = a.post(f"/webhooks/{mine['id']}/rotate").json()
        assert rotated["secret"] != mine["secret"] and rotated["secret"].startswith("whsec_")
        bad = root.post("/webhooks", json={"url": "ftp://x", "events": ["sent"]})
        assert bad.status_code == 422 and bad.json()["field"] == "url"
        bad = root.post("/webhooks", json={"url": "https://x.invalid", "events": ["opened"]})
        assert bad.status_code == 422 and bad.json()["field"] == "events"
