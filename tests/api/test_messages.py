"""`/v1/messages` over real HTTP: send, batch, read, list, retry, cancel; problems; tenants; limits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support import CHATBOT

OTHER = "b0b0b0b0c1c1c1c1"
PHONE = "+14155550123"
PROBLEM = "application/problem+json"


def _problem(r: httpx.Response, status: int, name: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == f"urn:oaksend:problem:{name}" and body["status"] == status and body["title"]
    assert body.get("field") == field, body
    return body


def test_send_read_and_list(client: httpx.Client) -> None:
    r = client.post("/messages", json={"chatbot": CHATBOT, "to": PHONE, "text": "See you at 10:00",
                                       "metadata": {"booking": 981}, "priority": "high"})
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    assert r.headers["location"] == f"messages/{first}"
    one = client.get(f"/messages/{first}").json()
    assert (one["state"], one["chatbot"], one["to"], one["metadata"], one["priority"], one["attempts"]) == (
        "pending", CHATBOT, PHONE, {"booking": 981}, "high", 0)
    assert one["attempt_history"] == [] and one["session_id"] is None
    ids = [first] + [client.post("/messages", json={"chatbot": OTHER if i % 2 else CHATBOT, "to": PHONE,
                                                    "text": f"m{i}"}).json()["id"] for i in range(4)]
    page = client.get("/messages", params={"limit": 2}).json()
    assert [m["id"] for m in page["messages"]] == ids[::-1][:2] and page["next_cursor"]
    rest = client.get("/messages", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert [m["id"] for m in rest["messages"]] == ids[::-1][2:] and rest["next_cursor"] is None
    only = client.get("/messages", params={"chatbot": OTHER, "state": ["pending", "sent"]}).json()["messages"]
    assert {m["id"] for m in only} == {ids[2], ids[4]}
    assert client.get("/messages", params={"since": "2999-01-01T00:00:00Z"}).json()["messages"] == []
    _problem(client.get("/messages", params={"state": "lost"}), 422, "invalid-field", "state")
    _problem(client.get("/messages/999999"), 404, "not-found")


def test_batch_is_all_or_nothing(client: httpx.Client) -> None:
    good = [{"chatbot": CHATBOT, "to": PHONE, "text": f"b{i}"} for i in range(50)]
    r = client.post("/messages/batch", json={"messages": good})
    assert r.status_code == 201 and len(r.json()["ids"]) == 50
    bad = [*good[:3], {"chatbot": CHATBOT, "to": "+1415", "text": "x"}, *good[3:]]
    _problem(client.post("/messages/batch", json={"messages": bad}), 422, "invalid-number", "messages[3].to")
    bad[3] = {"chatbot": "no", "to": PHONE, "text": "x"}
    _problem(client.post("/messages/batch", json={"messages": bad}), 422, "invalid-field", "messages[3].chatbot")
    assert len(client.get("/messages", params={"limit": 1000}).json()["messages"]) == 50
    _problem(client.post("/messages/batch", json={"messages": []}), 422, "invalid-field", "messages")


def test_problem_details(client: httpx.Client, outbox: Any) -> None:
    from oaksend.worker.clock import utcnow

    msg = {"chatbot": CHATBOT, "to": PHONE, "text": "hi"}
    _problem(client.post("/messages", json={**msg, "to": "4155550123"}), 422, "invalid-number", "to")
    _problem(client.post("/messages", json={**msg, "text": ""}), 422, "invalid-field", "text")
    _problem(client.post("/messages", json={**msg, "cc": "x"}), 422, "invalid-field", "cc")
    _problem(client.post("/messages", json={**msg, "text": 5}), 422, "invalid-field", "text")  # strict: no coercion
    _problem(client.post("/messages", json={**msg, "send_at": "2020-01-01T00:00:00Z"}), 422, "invalid-field",
             "send_at")
    _problem(client.post("/messages", content=b"{not json", headers={"content-type": "application/json"}), 400,
             "invalid-json", "body")
    with outbox.session() as s:
        from oaksend.models.tables import SuppressedNumber

        s.add(SuppressedNumber(to_phone=PHONE, reason="STOP", at=utcnow()))
    body = _problem(client.post("/messages", json=msg), 422, "suppressed", "to")
    assert PHONE not in body["detail"]  # masked
    huge = b'{"chatbot": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    _problem(client.post("/messages", content=huge, headers={"content-type": "application/json"}), 413,
             "too-large", "body")


def test_keys_and_scopes(server: str, make_key: Callable[..., str], outbox: Any) -> None:
    from oaksend.worker.clock import utcnow

    msg = {"chatbot": CHATBOT, "to": PHONE, "text": "hi"}
    with httpx.Client(base_url=server) as anon:
        _problem(anon.post("/messages", json=msg), 401, "unauthorized")
        r = anon.post("/messages", json=msg, headers={"authorization": "Bearer oks_00000000_" + "a" * 43})
        assert _problem(r, 401, "unauthorized") and r.headers["www-authenticate"] == "Bearer"
        reader = make_key(scopes=("read",))
        _problem(anon.post("/messages", json=msg, headers={"authorization": f"Bearer {reader}"}), 403, "forbidden")
        assert anon.get("/messages", headers={"authorization": f"Bearer {reader}"}).status_code == 200
        outbox.revoke_key(reader[:12], utcnow())
        _problem(anon.get("/messages", headers={"authorization": f"Bearer {reader}"}), 401, "unauthorized")


def test_tenant_isolation(server: str, make_key: Callable[..., str]) -> None:
    a = httpx.Client(base_url=server, headers={"authorization": f"Bearer {make_key(chatbots=[CHATBOT])}"})
    b = httpx.Client(base_url=server, headers={"authorization": f"Bearer {make_key(chatbots=[OTHER])}"})
    with a, b:
        mine = a.post("/messages", json={"chatbot": CHATBOT, "to": PHONE, "text": "a"}).json()["id"]
        theirs = b.post("/messages", json={"chatbot": OTHER, "to": PHONE, "text": "b"}).json()["id"]
        assert a.get(f"/messages/{mine}").status_code == 200
        _problem(a.get(f"/messages/{theirs}"), 404, "not-found")
        _problem(a.post(f"/messages/{theirs}/cancel"), 404, "not-found")
        _problem(a.post("/messages", json={"chatbot": OTHER, "to": PHONE, "text": "x"}), 403, "forbidden", "chatbot")
        _problem(a.post("/messages/batch", json={"messages": [{"chatbot": CHATBOT, "to": PHONE, "text": "x"},
                                                              {"chatbot": OTHER, "to": PHONE, "text": "x"}]}),
                 403, "forbidden", "messages[1].chatbot")
        assert [m["id"] for m in a.get("/messages").json()["messages"]] == [mine]
        _problem(a.get("/messages", params={"chatbot": OTHER}), 403, "forbidden", "chatbot")


def test_retry_and_cancel_are_audited(client: httpx.Client, outbox: Any) -> None:
    from sqlalchemy import select

    from oaksend.models.tables import OperatorAudit

    mid = client.post("/messages", json={"chatbot": CHATBOT, "to": PHONE, "text": "x"}).json()["id"]
    assert client.post(f"/messages/{mid}/cancel").json() == {"id": mid, "result": "cancelled"}
    _problem(client.post(f"/messages/{mid}/cancel"), 409, "invalid-state")
    assert client.post(f"/messages/{mid}/retry").json()["result"] == "retried"
    actions = client.get(f"/messages/{mid}").json()
    assert actions["state"] == "pending"
    with outbox.session() as s:
        rows = s.scalars(select(OperatorAudit).order_by(OperatorAudit.id)).all()
        audit = [(r.command, r.state, r.count, r.actor) for r in rows]
    prefix = client.headers["authorization"].split()[1][:12]
    actor = f"api-key:{prefix}"
    assert audit == [("api cancel", "done", 1, actor), ("api cancel", "done", 0, actor),
                     ("api retry", "done", 1, actor)]
    _, ops = outbox.history(mid)
    assert [(o.action, o.actor) for o in ops] == [("cancel", actor), ("retry", actor)]


def test_idempotency_key(client: httpx.Client, outbox: Any) -> None:
    from oaksend.worker.clock import utcnow

    msg = {"chatbot": CHATBOT, "to": PHONE, "text": "booking 981"}
    first = client.post("/messages", json=msg, headers={"idempotency-key": "k1"})
    again = client.post("/messages", json=msg, headers={"idempotency-key": "k1"})
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    _problem(client.post("/messages", json={**msg, "text": "other"}, headers={"idempotency-key": "k1"}), 422,
             "idempotency-conflict", "Idempotency-Key")
    # A refusal is kept too: the same body with the same key gets the same problem.
    bad = {**msg, "to": "+1"}
    r1 = client.post("/messages", json=bad, headers={"idempotency-key": "k2"})
    r2 = client.post("/messages", json=bad, headers={"idempotency-key": "k2"})
    assert r1.status_code == r2.status_code == 422 and r1.json() == r2.json()
    # It rides on the outbox's own key: the header is the message's idempotency key.
    assert client.post("/messages", json={**msg, "idempotency_key": "k1"}).json() == first.json()
    # A request still running with that key: 409 (the record is 'started', as a first request leaves it).
    body = json.dumps(msg).encode()
    digest = hashlib.sha256(b"POST /v1/messages\n" + body).hexdigest()
    key_id = outbox.key_by_hash(hashlib.sha256(client.headers["authorization"].split()[1].encode()).hexdigest()).id
    from datetime import timedelta

    assert outbox.idem_begin(key_id, "k3", digest, utcnow(), utcnow() - timedelta(seconds=60))[0] == "new"
    r = client.post("/messages", content=body, headers={"idempotency-key": "k3", "content-type": "application/json"})
    _problem(r, 409, "idempotency-in-progress", "Idempotency-Key")


def test_rate_limit(server: str, make_key: Callable[..., str]) -> None:
    with httpx.Client(base_url=server, headers={"authorization": f"Bearer {make_key(rate_limit=3)}"}) as c:
        answers = [c.get("/messages") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["ratelimit-policy"].endswith(";q=3;w=60")
    assert [a.headers["ratelimit"].split(";")[1] for a in answers[:3]] == ["r=2", "r=1", "r=0"]
    body = _problem(answers[3], 429, "rate-limited")
    assert 1 <= int(answers[3].headers["retry-after"]) <= 60 and "3 requests per 60 s" in body["detail"]


def test_openapi_and_reference(server: str) -> None:
    with httpx.Client(base_url=server) as c:
        spec = c.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        assert {"/messages", "/messages/batch", "/messages/{message_id}", "/messages/{message_id}/retry",
                "/messages/{message_id}/cancel", "/webhooks"} <= set(spec["paths"])
        assert "swagger" in c.get("/docs").text.lower() and "redoc" in c.get("/reference").text.lower()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_curl_sends_and_reads(server: str, make_key: Callable[..., str]) -> None:
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl")
    auth = f"authorization: Bearer {make_key()}"
    sent = subprocess.run([curl, "-sS", "-X", "POST", f"{server}/messages", "-H", auth, "-H",
                           "content-type: application/json", "-H", "idempotency-key: curl-1", "-d",
                           json.dumps({"chatbot": CHATBOT, "to": PHONE, "text": "from curl"})],
                          capture_output=True, text=True, check=True, timeout=30)
    mid = json.loads(sent.stdout)["id"]
    read = subprocess.run([curl, "-sS", "-f", f"{server}/messages/{mid}", "-H", auth], capture_output=True,
                          text=True, check=True, timeout=30)
    assert json.loads(read.stdout)["text"] == "from curl"
