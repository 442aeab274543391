"""The dashboard's security, over HTTP against `oaksend web` as a real process on real stores.

The browser tests (test_browser.py) do the same things through Chromium; these pin the answers.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.support import CHATBOT
from tests.web.conftest import PASSWORD, cli, csrf_of, web_env

NUMBER = "+14155550123"
PAGES = ["/", "/messages", "/chatbots", "/campaigns", "/audit", "/health"]


def test_it_refuses_to_start_without_a_way_to_log_in(database_url: str, redis_url: str) -> None:
    done = cli(web_env(database_url), "web", "--port", "1")
    assert done.returncode == 2
    assert "no way to log in" in done.stderr and "add-user" in done.stderr
    done = cli(web_env(database_url, OAKSEND_WEB_PROXY_HEADER="X-Forwarded-User"), "web")
    assert done.returncode == 2 and "OAKSEND_WEB_TRUSTED_PROXIES" in done.stderr


def test_add_user_refuses_a_short_password_and_keeps_no_password(database_url: str, outbox: Any) -> None:
    done = cli(web_env(database_url), "web", "add-user", "bob", "--role", "read", stdin="short\n")
    assert done.returncode == 2 and "at least 8" in done.stderr
    assert outbox.web_user("bob") is None
    done = cli(web_env(database_url), "web", "add-user", "bob", "--role", "read", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    row = outbox.web_user("bob")
    assert row.role == "read" and row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash


def test_every_page_renders_with_a_fresh_csp_nonce_and_safe_cookie(start_web: Any, producer: Any) -> None:
    producer.send(CHATBOT, NUMBER, "hello")
    web = start_web({"ann": "admin"})
    anonymous = web.client()
    first = anonymous.get("/login")
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie  # loopback: no TLS
    client = web.login("ann")
    nonces = set()
    for path in PAGES:
        r = client.get(path)
        assert r.status_code in (200, 503) if path == "/health" else r.status_code == 200, (path, r.text[:300])
        csp = r.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp).group(1)  # type: ignore[union-attr]
        nonces.add(nonce)
        assert "unsafe-inline" not in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert f'nonce="{nonce}"' in r.text
        assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
    assert len(nonces) == len(PAGES)
    health = client.get("/health.json")
    assert {c["part"] for c in health.json()["checks"]} == {"database", "redis", "dispatcher", "workers",
                                                              "backlog"}
    assert anonymous.get("/messages").status_code == 303  # not logged in: to the login page


def test_failed_logins_are_braked(start_web: Any) -> None:
    web = start_web({"ann": "admin"})
    client = web.client()
    for _ in range(5):
        r = client.post("/login", data={"csrf": csrf_of(client.get("/login").text), "name": "ann",
                                        "password": "wrong password"})
        assert r.status_code == 401 and "wrong name or password" in r.text
    r = client.post("/login", data={"csrf": csrf_of(client.get("/login").text), "name": "ann",
                                    "password": PASSWORD})
    assert r.status_code == 429 and "too many failed attempts" in r.text


def test_a_post_without_the_token_or_from_another_site_is_refused(start_web: Any, outbox: Any) -> None:
    web = start_web({"olga": "operator"})
    client = web.login("olga")
    token = csrf_of(client.get("/chatbots").text)
    form = {"sn": CHATBOT, "verb": "pause", "reason": "test"}
    assert client.post("/chatbots/act", data=form).status_code == 403
    assert client.post("/chatbots/act", data={**form, "csrf": "forged"}).status_code == 403
    other = client.post("/chatbots/act", data={**form, "csrf": token}, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and "another site" in other.text
    fetch = client.post("/chatbots/act", data={**form, "csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status_code == 403
    assert CHATBOT not in outbox.chatbots()
    ok = client.post("/chatbots/act", data={**form, "csrf": token}, headers={"Origin": web.url})
    assert ok.status_code == 303
    assert outbox.chatbots()[CHATBOT].pause_reason == "paused by operator: test"
    audit = outbox.audit_log(command="chatbot pause")
    assert [(a.actor, a.state, a.selection["chatbot"]) for a in audit] == [("web:olga", "done", CHATBOT)]


def test_a_read_only_user_sees_no_action_and_a_forged_post_gets_403(start_web: Any, producer: Any,
                                                                     outbox: Any) -> None:
    from oaksend.worker.status import Status

    mid = producer.send(CHATBOT, NUMBER, "hello")
    with Status(producer.settings, outbox=outbox) as status:
        assert status.cancel([mid]) == {mid: "cancelled"}
    web = start_web({"rita": "read"})
    client = web.login("rita")
    listing, story = client.get("/messages").text, client.get(f"/messages/{mid}").text
    for html in (listing, story):
        assert 'value="retry"' not in html and 'value="cancel"' not in html and "reveal" not in html
    assert 'name="verb"' not in client.get("/chatbots").text
    token = csrf_of(listing)
    forged = client.post("/messages/act", data={"csrf": token, "verb": "retry", "ids[]": str(mid), "confirmed": "1"})
    assert forged.status_code == 403
    assert client.post(f"/messages/{mid}/reveal", data={"csrf": token}).status_code == 403
    assert client.post("/chatbots/act", data={"csrf": token, "sn": CHATBOT, "verb": "pause"}).status_code == 403
    assert outbox.get(mid).state == "cancelled" and CHATBOT not in outbox.chatbots()


def test_a_search_keeps_the_number_out_of_urls_and_logs(start_web: Any, producer: Any) -> None:
    mid = producer.send(CHATBOT, NUMBER, "hello")
    other = producer.send(CHATBOT, "+14155550199", "hello")
    web = start_web({"olga": "operator"})
    client = web.login("olga")
    token = csrf_of(client.get("/messages").text)
    r = client.post("/messages/search", data={"csrf": token, "q": NUMBER})
    assert r.status_code == 303
    location = r.headers["location"]
    assert re.fullmatch(r"/messages\?f=[\w-]+", location) and "555" not in location
    page = client.get(location).text
    assert f'href="/messages/{mid}"' in page and f'href="/messages/{other}"' not in page
    assert NUMBER not in page and "+1415****123" in page
    bad = client.post("/messages/search", data={"csrf": token, "q": "+1 (415) nope"})
    assert bad.status_code == 400 and "q:" in bad.text
    assert "5550123" not in web.log.read_text()


def test_a_script_in_a_body_is_text(start_web: Any, producer: Any) -> None:
    mid = producer.send(CHATBOT, NUMBER, "<script>alert(1)</script>")
    client = start_web({"ann": "admin"}).login("ann")
    html = client.get(f"/messages/{mid}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html


def test_revealing_a_number_is_for_admins_and_audited(start_web: Any, producer: Any, outbox: Any) -> None:
    mid = producer.send(CHATBOT, NUMBER, "hello")
    web = start_web({"ann": "admin", "olga": "operator"})
    admin = web.login("ann")
    story = admin.get(f"/messages/{mid}").text
    assert NUMBER not in story
    shown = admin.post(f"/messages/{mid}/reveal", data={"csrf": csrf_of(story)})
    assert shown.status_code == 200 and NUMBER in shown.text
    assert [(a.actor, a.selection) for a in outbox.audit_log(command="web reveal")] == [("web:ann", {"ids": [mid]})]
    operator = web.login("olga")
    assert operator.post(f"/messages/{mid}/reveal",
                         data={"csrf": csrf_of(operator.get("/").text)}).status_code == 403


def test_retry_asks_with_the_exact_count_then_acts_with_the_cli_audit(start_web: Any, producer: Any,
                                                                      outbox: Any) -> None:
    from oaksend.worker.status import Status

    ids = [producer.send(CHATBOT, NUMBER, f"hello {i}") for i in range(3)]
    with Status(producer.settings, outbox=outbox) as status:
        status.cancel(ids[:2])
    client = start_web({"olga": "operator"}).login("olga")
    token = csrf_of(client.get("/messages").text)
    ask = client.post("/messages/act", data={"csrf": token, "verb": "retry", "ids[]": [str(i) for i in ids]})
    assert ask.status_code == 200 and "Retry 2 of 3 selected messages?" in ask.text
    assert "1 not: is pending" in ask.text
    assert [outbox.get(i).state for i in ids] == ["cancelled", "cancelled", "pending"]  # nothing changed yet
    done = client.post("/messages/act", data={"csrf": token, "verb": "retry", "ids[]": [str(i) for i in ids],
                                              "confirmed": "1", "back": "/messages"})
    assert done.status_code == 303
    assert [outbox.get(i).state for i in ids] == ["pending", "pending", "pending"]
    (audit,) = outbox.audit_log(command="retry")
    assert (audit.actor, audit.count, audit.state, audit.selection) == ("web:olga", 2, "done", {"ids": ids})
    assert "retry: 2 of 3 messages retried" in client.get("/messages").text


def test_mounted_with_a_resolver(settings: Any, producer: Any, outbox: Any) -> None:
    """An application mounts the app and decides who is asking; no login page, the same role checks."""
    import threading

    import uvicorn

    from oaksend.web import User, create_app
    from tests.support import free_port, wait_until

    mid = producer.send(CHATBOT, NUMBER, "hello")
    who: dict[str, User | None] = {"user": None}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, resolver=lambda request: who["user"]),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, what="the mounted app")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/").status_code == 403
            who["user"] = User("app-user", "read")
            page = client.get(f"/messages/{mid}")
            assert page.status_code == 200 and "log out" not in page.text
            token = csrf_of(client.get("/messages").text)  # the search form's: a read-only user has it too
            form = {"csrf": token, "verb": "cancel", "ids[]": str(mid), "confirmed": "1"}
            assert client.post("/messages/act", data=form).status_code == 403
            assert client.post("/messages/act", data={**form, "csrf": "forged"}).status_code == 403
            who["user"] = User("app-admin", "admin")
            assert client.post("/messages/act", data={**form, "csrf": "forged"}).status_code == 403
            assert outbox.get(mid).state == "pending"
            assert client.post("/messages/act", data=form).status_code == 303
            assert outbox.get(mid).state == "cancelled"
    finally:
        server.should_exit = True
        thread.join(10)
