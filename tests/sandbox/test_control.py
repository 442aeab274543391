"""The /_sandbox control endpoints: records, stats, reset, runtime config."""

from __future__ import annotations

import httpx
import pytest

from tests.sandbox.helpers import KEY, PHONE, SERIAL, configure, records, script, send


def test_records_hold_what_was_sent(client: httpx.Client) -> None:
    ok = send(client, message="first")
    send(client, message="second", key="wrong")

    first, second = records(client)
    assert first == {
        "seq": 1,
        "received_at": first["received_at"],
        "serial_number": SERIAL,
        "to_phone_number": PHONE,
        "message": "first",
        "auth_ok": True,
        "fault": "ok",
        "status": 200,
        "session_id": ok.json()["Data"]["SessionID"],
        "scripted": False,
        "delay_ms": 0.0,
    }
    assert (second["seq"], second["auth_ok"], second["status"], second["session_id"]) == (2, False, 401, None)
    assert second["received_at"] >= first["received_at"] > 1.7e9


def test_records_since(client: httpx.Client) -> None:
    for i in range(5):
        send(client, message=str(i))
    assert [r["message"] for r in records(client, since=3)] == ["3", "4"]
    assert records(client, since=5) == []
    assert client.get("/_sandbox/requests", params={"since": "x"}).status_code == 400


def test_stats_shape(client: httpx.Client) -> None:
    send(client)
    send(client, serial="SN-2")
    configure(client, p_503=1)
    send(client)
    script(client, ["reset"], ToPhoneNumber="+15550009999")

    stats = client.get("/_sandbox/stats").json()
    assert stats["total"] == 3
    assert stats["sessions_issued"] == 2
    assert stats["by_status"] == {"200": 2, "503": 1}
    assert stats["by_fault"] == {"ok": 2, "503": 1}
    assert stats["scripts_pending"] == [{"ToPhoneNumber": "+15550009999", "responses": ["reset"]}]
    assert stats["uptime_s"] > 0
    assert set(stats["chatbots"]) == {SERIAL, "SN-2"}
    assert set(stats["chatbots"][SERIAL]) == {
        "received", "limit", "violations", "max_1s", "span_s", "mean_rate_per_s", "by_status"
    }
    assert stats["chatbots"][SERIAL]["received"] == 2


def test_reset_clears_records_stats_and_scripts(client: httpx.Client) -> None:
    before = send(client).json()["Data"]["SessionID"]
    script(client, ["503"], ToPhoneNumber=PHONE)
    assert client.post("/_sandbox/reset").json() == {"ok": True}

    assert records(client) == [] and client.get("/_sandbox/stats").json()["total"] == 0
    after = send(client)
    assert after.status_code == 200  # the script is gone
    assert after.json()["Data"]["SessionID"] > before  # SessionIDs are never reused
    assert records(client)[0]["seq"] == 1


def test_runtime_config_change(client: httpx.Client) -> None:
    assert send(client).status_code == 200
    config = configure(client, **{"p-503": "1", "latency": "normal:1,0.5", "limit": ["SN-X=3:2"]})
    assert (config["p_503"], config["latency"], config["limits"]) == (1.0, "normal:1,0.5", {"SN-X": "3:2"})
    assert send(client).status_code == 503
    assert client.get("/_sandbox/config").json()["p_503"] == 1.0


@pytest.mark.parametrize(
    "changes",
    [{"p_503": 2}, {"p_500": 0.6, "p_503": 0.6}, {"port": 1}, {"nonsense": 1}, {"latency": "gamma:1"}, {"limits": "SN"}],
)
def test_invalid_config_is_refused_and_changes_nothing(client: httpx.Client, changes: dict[str, object]) -> None:
    before = client.get("/_sandbox/config").json()
    response = client.post("/_sandbox/config", json=changes)
    assert response.status_code == 400 and response.json()["error"]
    assert client.get("/_sandbox/config").json() == before


def test_api_key_is_never_shown(client: httpx.Client) -> None:
    send(client)
    configure(client, api_key="rotated-key")
    assert send(client, key="rotated-key").status_code == 200
    for path in ("/_sandbox/config", "/_sandbox/stats", "/_sandbox/requests"):
        text = client.get(path).text
        assert KEY not in text and "rotated-key" not in text


@pytest.mark.parametrize(("method", "path"), [("POST", "/_sandbox/stats"), ("GET", "/_sandbox/reset")])
def test_control_wrong_method(client: httpx.Client, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 405


def test_health_and_unknown_control_path(client: httpx.Client) -> None:
    assert client.get("/_sandbox/health").json() == {"ok": True}
    assert client.get("/_sandbox/nothing").status_code == 404
