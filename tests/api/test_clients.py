"""Other languages' clients (Node's fetch), the CLI of keys and endpoints, and signing's rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import CHATBOT

NODE_SCRIPT = r"""
const [base, key, chatbot] = process.argv.slice(1);
const headers = {"authorization": `Bearer ${key}`, "content-type": "application/json", "idempotency-key": "node-1"};
const sent = await fetch(`${base}/messages`, {method: "POST", headers,
  body: JSON.stringify({chatbot, to: "+14155550123", text: "from node"})});
const {id} = await sent.json();
const again = await fetch(`${base}/messages`, {method: "POST", headers,
  body: JSON.stringify({chatbot, to: "+14155550123", text: "from node"})});
const read = await (await fetch(`${base}/messages/${id}`, {headers})).json();
console.log(JSON.stringify({status: sent.status, replayed: again.headers.get("idempotent-replayed"),
  same: (await again.json()).id === id, text: read.text, state: read.state}));
"""


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_node_fetch_sends_and_reads(server: str, make_key: Callable[..., str]) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node")
    out = subprocess.run([node, "--input-type=module", "-e", NODE_SCRIPT, server, make_key(), CHATBOT],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": 201, "replayed": "true", "same": True, "text": "from node",
                                      "state": "pending"}


def _cli(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OAKSEND_")}
    env.update(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url, OAKSEND_ACTOR="ops-test")
    env.update({"OAKSEND_KEY_HASH_SECRET": "cli-secret-1234"} if "--no-secret" not in args else {})
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *[a for a in args if a != "--no-secret"]],
                          capture_output=True, text=True, env=env, timeout=60)


def test_cli_keys_and_endpoints(api_settings: Any, outbox: Any) -> None:
    from oaksend.worker.apikeys import token_hash

    made = _cli(api_settings, "api-key", "create", "--name", "booking", "--scopes", "send,read",
                "--chatbots", CHATBOT, "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    row = outbox.key_by_hash(token_hash(key["key"]))
    assert (row.prefix, row.scopes, row.chatbots) == (key["prefix"], ["send", "read"], [CHATBOT])
    listed = json.loads(_cli(api_settings, "api-key", "list", "--json").stdout)
    assert [k["prefix"] for k in listed] == [key["prefix"]] and key["key"] not in json.dumps(listed)
    bad = _cli(api_settings, "api-key", "create", "--name", "x", "--scopes", "write")
    assert bad.returncode == 2 and "scopes" in bad.stderr
    assert _cli(api_settings, "api-key", "revoke", key["prefix"]).returncode == 0
    assert _cli(api_settings, "api-key", "revoke", key["prefix"]).returncode == 3
    assert outbox.key_by_hash(token_hash(key["key"])).revoked_at is not None

    refused = _cli(api_settings, "webhook", "add", "https://example.invalid/h", "--no-secret")
    assert refused.returncode == 2 and "OAKSEND_KEY_HASH_SECRET" in refused.stderr
    added = _cli(api_settings, "webhook", "add", "https://example.invalid/h", "--events", "sent,expired", "--json")
    assert added.returncode == 0, added.stderr
    hook = json.loads(added.stdout)
    assert hook["secret"].startswith("whsec_")
    listed = json.loads(_cli(api_settings, "webhook", "list", "--json").stdout)
    assert [(e["id"], e["events"]) for e in listed] == [(hook["id"], "sent,expired")]
    assert hook["secret"] not in json.dumps(listed)
    assert _cli(api_settings, "webhook", "add", "https://x.invalid", "--events", "opened").returncode == 2
    assert _cli(api_settings, "webhook", "rotate", str(hook["id"])).stdout.strip() != hook["secret"]
    assert json.loads(_cli(api_settings, "webhook", "deliveries", str(hook["id"]), "--json").stdout) == []
    assert _cli(api_settings, "webhook", "remove", str(hook["id"])).returncode == 0
    assert _cli(api_settings, "webhook", "remove", str(hook["id"])).returncode == 3
    assert _cli(api_settings, "webhook", "redeliver", "999").returncode == 3


def test_signatures_follow_the_scheme() -> None:
    import base64
    import hashlib
    import hmac
    import time

    from oaksend.worker.webhooks.signing import derive_secret, retry_delay_s, signature_header, verify

    old, new = derive_secret("s", "salt-1"), derive_secret("s", "salt-2")
    assert old != new and derive_secret("s", "salt-1") == old and derive_secret("t", "salt-1") != old
    now = int(time.time())
    header = signature_header([new, old], "evt_1", now, b'{"a":1}')
    assert len(header.split(" ")) == 2  # during a rotation both secrets sign
    assert verify(old, "evt_1", str(now), b'{"a":1}', header, now=now)
    assert verify(new, "evt_1", str(now), b'{"a":1}', header, now=now)
    assert not verify(new, "evt_1", str(now), b'{"a":2}', header, now=now)
    assert not verify(new, "evt_1", str(now), b'{"a":1}', header, now=now + 301)  # a replay
    key = base64.b64decode(new.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"evt_1.{now}.".encode() + b'{"a":1}', hashlib.sha256).digest())
    assert header.split(" ")[0] == "v1," + expected.decode()
    delays = [retry_delay_s(n) for n in range(1, 15)]
    assert delays[0] == 5 and delays[11] == 86400 and delays[12] is None
    assert sum(d for d in delays if d) > 24 * 3600  # a receiver away for a day loses nothing
