"""Each injected fault, at probability 1 or scripted, as a client meets it."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.sandbox.helpers import PHONE, SERIAL, configure, records, script, send


@pytest.mark.parametrize("status", [429, 500, 503])
def test_http_error_with_envelope(client: httpx.Client, status: int) -> None:
    configure(client, **{f"p_{status}": 1})
    response = send(client)
    assert response.status_code == status
    body = response.json()
    assert body["Success"] is False and body["Code"] == status and body["Data"] is None
    assert records(client)[-1]["fault"] == str(status)


def test_429_carries_retry_after(client: httpx.Client) -> None:
    configure(client, p_429=1, retry_after=7)
    assert send(client).headers["Retry-After"] == "7"
    configure(client, retry_after=-1)
    assert "Retry-After" not in send(client).headers


@pytest.mark.parametrize("status", [502, 504])
def test_proxy_errors_are_html(client: httpx.Client, status: int) -> None:
    configure(client, **{f"p_{status}": 1})
    response = send(client)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<html>") and response.text.rstrip().endswith("</html>")


def test_code_500_under_http_200(client: httpx.Client) -> None:
    configure(client, p_code_500=1)
    response = send(client)
    assert response.status_code == 200
    assert response.json() == {"Data": None, "Version": "1.0.0", "Success": False, "Code": 500, "Message": "Internal error"}


def test_status_false(client: httpx.Client) -> None:
    configure(client, p_status_false=1)
    body = send(client).json()
    assert body["Success"] is True and body["Code"] == 200
    assert body["Data"]["Status"] == "False"
    assert body["Data"]["Message"] == "Twilio error 30003: Unreachable destination handset"
    assert body["Data"]["SessionID"] == records(client)[-1]["session_id"]


def test_twilio_error(client: httpx.Client) -> None:
    configure(client, p_twilio_error=1, twilio_code="30022")
    response = send(client)
    body = response.json()
    assert response.status_code == 200
    assert (body["Code"], body["Success"], body["Data"]) == (400, False, None)
    assert body["Message"] == "Twilio error 30022: US A2P 10DLC - Rate Limits Exceeded"
    assert records(client)[-1]["fault"] == "twilio:30022"


def test_hang_is_recorded_then_closed_without_answer(client: httpx.Client) -> None:
    configure(client, p_hang=1, hang_s=0.3)
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        send(client)
    assert time.monotonic() - started >= 0.29
    assert records(client)[-1]["status"] == "hang"


def test_hang_times_out_a_patient_client(client: httpx.Client) -> None:
    configure(client, p_hang=1, hang_s=2)
    with pytest.raises(httpx.ReadTimeout):
        send(client, timeout=0.2)
    (record,) = records(client)
    assert (record["fault"], record["status"], record["to_phone_number"]) == ("hang", "hang", PHONE)


def test_reset_is_a_transport_error(client: httpx.Client) -> None:
    configure(client, p_reset=1)
    with pytest.raises(httpx.TransportError):
        send(client)
    configure(client, p_reset=0)
    assert send(client).status_code == 200  # the client reconnects
    assert [r["status"] for r in records(client)] == ["reset", 200]


def test_latency_is_added(client: httpx.Client) -> None:
    configure(client, latency="150")
    started = time.monotonic()
    assert send(client).status_code == 200
    assert time.monotonic() - started >= 0.14
    assert records(client)[-1]["delay_ms"] == 150


def test_latency_distribution_stays_in_range(client: httpx.Client) -> None:
    configure(client, latency="uniform:1,5")
    for _ in range(10):
        send(client)
    assert all(1 <= r["delay_ms"] <= 5 for r in records(client))


def not_a_success(response: httpx.Response) -> bool:
    """What a careful client must conclude: this body does not prove a send."""
    try:
        body = response.json()
    except ValueError:
        return True
    if not isinstance(body, dict) or not isinstance(body.get("Data"), dict):
        return True
    return not (body.get("Success") is True and body.get("Code") == 200 and isinstance(body["Data"].get("SessionID"), int))


@pytest.mark.parametrize(
    ("variant", "check"),
    [
        ("truncated", lambda r: r.headers["Content-Type"].startswith("application/json") and r.text.startswith('{"Data"')),
        ("html", lambda r: r.headers["Content-Type"].startswith("text/html")),
        ("array", lambda r: isinstance(r.json(), list)),
        ("wrong-types", lambda r: r.json()["Code"] == "abc" and r.json()["Data"]["SessionID"] == "x"),
        ("missing-fields", lambda r: "Success" not in r.json()),
        ("huge", lambda r: len(r.content) > 2_000_000),
        ("empty", lambda r: r.content == b""),
    ],
)
def test_malformed_variants(client: httpx.Client, variant: str, check) -> None:  # type: ignore[no-untyped-def]
    script(client, [f"malformed:{variant}"], ToPhoneNumber=PHONE)
    response = send(client)
    assert response.status_code == 200
    assert check(response)
    if variant != "huge":
        assert not_a_success(response)
    assert records(client)[-1]["fault"] == f"malformed:{variant}"


def test_random_malformed_picks_variants(client: httpx.Client) -> None:
    configure(client, p_malformed=1)
    for _ in range(30):
        assert send(client).status_code == 200
    faults = {r["fault"] for r in records(client)}
    assert len(faults) >= 4 and all(f.startswith("malformed:") for f in faults)


def test_burst_of_429(client: httpx.Client) -> None:
    configure(client, burst_429_every=0.8, burst_429_for=0.4)  # the schedule starts now
    assert send(client).status_code == 200  # no burst before the first period ends
    time.sleep(0.95)  # into the burst of 0.8 s .. 1.2 s
    response = send(client)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    time.sleep(0.4)  # past it
    assert send(client).status_code == 200
    assert [r["fault"] for r in records(client)] == ["ok", "burst-429", "ok"]


def test_probabilities_follow_the_seed(client: httpx.Client) -> None:
    def run() -> list[int]:
        configure(client, seed=42, p_503=0.5)
        return [send(client).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert 3 <= first.count(503) <= 17 and set(first) == {200, 503}


def test_scripted_outcomes_in_order_then_normal(client: httpx.Client) -> None:
    script(client, ["503", "code:500", "status-false", "twilio:21610", "401", "ok", "429"], ToPhoneNumber=PHONE)
    other = send(client, phone="+15550002222")
    answers = [send(client) for _ in range(8)]

    assert other.status_code == 200  # another number is not affected
    assert [a.status_code for a in answers] == [503, 200, 200, 200, 401, 200, 429, 200]
    assert answers[1].json()["Code"] == 500
    assert answers[2].json()["Data"]["Status"] == "False"
    assert answers[3].json()["Message"].startswith("Twilio error 21610: ")
    faults = [(r["fault"], r["scripted"]) for r in records(client)[1:]]
    assert faults == [
        ("503", True), ("code:500", True), ("status-false", True), ("twilio:21610", True),
        ("401", True), ("ok", True), ("429", True), ("ok", False),
    ]


def test_scripts_win_over_random_faults_and_match_by_serial(client: httpx.Client) -> None:
    configure(client, p_503=1)
    script(client, ["ok"], SerialNumber="SN-OTHER")
    assert send(client, serial="SN-OTHER").status_code == 200
    assert send(client, serial="SN-OTHER").status_code == 503


def test_scripted_hang_and_reset(client: httpx.Client) -> None:
    script(client, ["hang:0.2", "reset"], ToPhoneNumber=PHONE)
    with pytest.raises(httpx.RemoteProtocolError):
        send(client)
    with pytest.raises(httpx.TransportError):
        send(client)
    assert [r["status"] for r in records(client)] == ["hang", "reset"]


def test_invalid_requests_do_not_consume_scripts(client: httpx.Client) -> None:
    script(client, ["503"], ToPhoneNumber=PHONE)
    assert send(client, key="wrong").status_code == 401
    assert send(client).status_code == 503


@pytest.mark.parametrize(
    "payload",
    [
        {"ToPhoneNumber": PHONE, "responses": ["teapot"]},
        {"ToPhoneNumber": PHONE, "responses": ["503", "malformed:weird"]},
        {"ToPhoneNumber": PHONE, "responses": []},
        {"responses": ["503"]},
        {"ToPhoneNumber": PHONE, "SerialNumber": SERIAL, "responses": ["503"]},
    ],
)
def test_bad_scripts_are_refused_whole(client: httpx.Client, payload: dict[str, object]) -> None:
    response = client.post("/_sandbox/script", content=json.dumps(payload))
    assert response.status_code == 400 and response.json()["error"]
    assert send(client).status_code == 200


def test_odd_successes_state_success_and_differ_elsewhere(client: httpx.Client) -> None:
    from oaksend.sandbox.faults import ODD_SUCCESS_VARIANTS

    from oaksend.sandbox.responses import success

    for variant in ODD_SUCCESS_VARIANTS:
        script(client, [f"success:{variant}"], ToPhoneNumber=PHONE)
        response = send(client)
        assert response.status_code == 200, variant
        body = response.json()
        assert body.get("Success") is True and str(body.get("Code")).strip() in ("200", "200.0"), variant
        assert str(body["Data"]["Status"]).strip().lower() == "true", variant
        record = records(client)[-1]
        assert record["fault"] == f"success:{variant}" and isinstance(record["session_id"], int), variant
        assert response.content != success(record["session_id"]).body, variant  # really odd


def test_an_unknown_odd_success_is_refused(client: httpx.Client) -> None:
    response = client.post("/_sandbox/script", json={"ToPhoneNumber": PHONE, "responses": ["success:weird"]})
    assert response.status_code == 400 and "success:" in response.json()["error"]
