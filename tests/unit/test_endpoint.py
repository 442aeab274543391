"""The pure functions at the NewOaks boundary, without I/O.

`newoaks.endpoint`: the base URL (region or explicit, its checks), the API key
check, Retry-After read against the response's Date; `newoaks.envelope`: the
response body read leniently, never raising, with the key cut out of every text.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaksend.errors import ConfigError
from oaksend.worker.newoaks.endpoint import (
    SEND_PATH,
    base_url_for,
    check_api_key,
    check_base_url,
    parse_retry_after,
    reference_time,
)
from oaksend.worker.newoaks.envelope import parse_envelope

KEY = "sk-test-0123456789abcdefSECRET"
SUCCESS: dict[str, Any] = {
    "Data": {"Status": "True", "Message": "test", "SessionID": 123123123123},
    "Version": "1.0.0",
    "Success": True,
    "Code": 200,
    "Message": "",
}
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def test_send_path_is_the_documented_one() -> None:
    assert SEND_PATH == "/chat/Chatbot/SendTwilioMessage"


# --- base_url_for ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "base_url", "expected"),
    [
        ("us", None, "https://usapi.hottask.com"),
        ("eu", None, "https://euapi.hottask.com"),
        ("EU", None, "https://euapi.hottask.com"),
        (" us ", "", "https://usapi.hottask.com"),
        ("us", "   ", "https://usapi.hottask.com"),
        ("us", "https://sms.example.com/", "https://sms.example.com"),
        (None, "https://sms.example.com//", "https://sms.example.com"),
        ("mars", "https://sms.example.com", "https://sms.example.com"),
    ],
)
def test_base_url_for(region: str | None, base_url: str | None, expected: str) -> None:
    assert base_url_for(region, base_url) == expected


@pytest.mark.parametrize("region", ["mars", "", "   ", None, "u s"])
def test_base_url_for_an_unknown_or_missing_region_is_refused(region: str | None) -> None:
    with pytest.raises(ConfigError, match="NEWOAKS_REGION"):
        base_url_for(region, None)


def test_base_url_for_checks_an_explicit_url() -> None:
    with pytest.raises(ConfigError, match="NEWOAKS_BASE_URL"):
        base_url_for("us", "http://sms.example.com")
    assert base_url_for("us", "http://sms.example.com", allow_insecure=True) == "http://sms.example.com"


# --- check_base_url -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["usapi.hottask.com", "ftp://usapi.hottask.com", "https://", "https://usapi.hottask.com:99999", "http://[::1"],
)
def test_check_base_url_refuses_what_is_not_an_http_url_with_a_host(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_base_url(url, allow_insecure=True)
    text = str(info.value)
    assert text.startswith("NEWOAKS_BASE_URL: ") and "\n" not in text


def test_check_base_url_refusal_does_not_echo_credentials_in_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        check_base_url(f"http://user:{KEY}@api.example.com/x")
    assert KEY not in str(info.value)
    assert "api.example.com" in str(info.value)


# --- check_api_key ------------------------------------------------------------------


def test_check_api_key_accepts_a_plain_key() -> None:
    check_api_key(KEY)


@pytest.mark.parametrize(
    "api_key",
    ["", f" {KEY}", f"{KEY}\n", f"{KEY}\r\nX-Evil: 1", f"Bearer {KEY}", f"{KEY}é", f"{KEY}\x7f"],
)
def test_check_api_key_refuses_an_unusable_key_without_quoting_it(api_key: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_api_key(api_key)
    assert KEY not in str(info.value)
    assert KEY[:12] not in str(info.value)


# --- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("9" * 400, 1e9),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
        ("1e3", None),
        ("Sun, 01 Jun 2025 12:01:00 GMT", 60.0),
        ("Sun, 01 Jun 2025 11:00:00 GMT", 0.0),
        ("Sunday, 01-Jun-25 12:00:10 GMT", 10.0),
        ("Sun, 99 Jun 2025 12:01:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("retry_after", "date", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:30 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:29:00 GMT", 0.0),
        ("120", "Wed, 21 Oct 2015 07:28:00 GMT", 120.0),
    ],
)
def test_retry_after_is_read_against_the_response_date(retry_after: str, date: str, expected: float) -> None:
    # The server's clock, not ours: a 2015 Date makes a 2015 Retry-After 30 s away.
    assert parse_retry_after(retry_after, now=reference_time(date)) == expected


@pytest.mark.parametrize("date", [None, "", "yesterday", "Sun, 99 Jun 2025 12:01:00 GMT"])
def test_reference_time_without_a_readable_date_is_our_clock(date: str | None) -> None:
    before = datetime.now(timezone.utc)
    got = reference_time(date)
    assert before <= got <= datetime.now(timezone.utc)


def test_reference_time_reads_a_date_as_utc() -> None:
    assert reference_time("Wed, 21 Oct 2015 07:28:00 GMT") == datetime(2015, 10, 21, 7, 28, tzinfo=timezone.utc)
    assert reference_time("Wed, 21 Oct 2015 09:28:00 +0200").utcoffset() == timedelta(hours=2)


@settings(max_examples=300, database=None, deadline=None)
@given(value=st.text(max_size=60))
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, now=NOW)
    assert result is None or 0.0 <= result <= 1e9


# --- the envelope ------------------------------------------------------------------

ERROR_ENVELOPE = {"Success": False, "Code": 401, "Message": "Unauthorized", "Data": None}


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in SUCCESS.items() if k != name}


@pytest.mark.parametrize(
    ("status", "body", "malformed", "fields", "anomaly"),
    [
        (401, ERROR_ENVELOPE, None, {"success": False, "code": 401, "message": "Unauthorized"}, "no Version"),
        (200, SUCCESS, None, {"success": True, "code": 200, "session_id": 123123123123}, None),
        (200, {**SUCCESS, "Message": None, "Version": 3}, None, {"message": None, "version": "3"}, "Version is a number"),
        (
            200,
            {**SUCCESS, "Data": {"Status": "True"}},
            None,
            {"session_id": None, "session_id_text": None, "data_message": None, "data_status": "True"},
            None,
        ),
        (502, b"<!DOCTYPE html><html><body>Bad gateway</body></html>", "html page", {}, None),
        (200, b"<html><title>Login</title></html>", "html page", {}, None),
        (200, b"<xml/>", "not json", {}, None),
        (200, b'{"Success": true, "Code": 200, "Mess', "truncated json", {"success": None}, None),
        (200, b'{"Success": true, "Code": 200, "Message": "", "Data": {"Status": tr', "truncated json", {}, None),
        (200, b'{"Success": true, "Code": 20', "truncated json", {}, None),
        (200, b"OK", "not json", {}, None),
        (200, b'{"Success": true} trailing', "not json", {}, None),
        (200, b"\xff\xfe\xfa\x00", "not json", {}, None),
        (200, b"[1, 2]", "not an object", {}, None),
        (200, b'"True"', "not an object", {}, None),
        (200, b"", "empty body", {}, None),
        (200, b"  \r\n ", "empty body", {}, None),
        # Readable but odd: read as far as each field goes, the oddity listed, never malformed.
        (200, _without("Code"), None, {"code": None, "session_id": 123123123123}, "no Code"),
        (200, _without("Success"), None, {"success": None, "code": 200}, "no Success"),
        (200, _without("Data"), None, {"code": 200, "data_status": None}, "no Data"),
        (200, _without("Message"), None, {"message": None, "data_status": "True"}, "no Message"),
        (200, _without("Version"), None, {"version": None, "code": 200}, "no Version"),
        (200, {**SUCCESS, "Success": "true"}, None, {"success": True}, "Success is a string"),
        (200, {**SUCCESS, "Success": " FALSE "}, None, {"success": False}, "Success is a string"),
        (200, {**SUCCESS, "Success": None}, None, {"success": None, "code": 200}, "Success is null"),
        (200, {**SUCCESS, "Success": 1}, None, {"success": None}, "Success is a number: 1"),
        (200, {**SUCCESS, "Code": True}, None, {"code": None, "success": True}, "Code is a boolean"),
        (200, {**SUCCESS, "Code": "200"}, None, {"code": 200}, "Code is a string"),
        (200, {**SUCCESS, "Code": " 200 "}, None, {"code": 200}, "Code is a string"),
        (200, {**SUCCESS, "Code": "abc"}, None, {"code": None}, 'Code is a string: "abc"'),
        (200, {**SUCCESS, "Code": 200.0}, None, {"code": 200}, "Code is written as a float"),
        (200, {**SUCCESS, "Code": 200.5}, None, {"code": None}, "Code is not an integer: 200.5"),
        (200, {**SUCCESS, "Code": 2**40}, None, {"code": 2**40}, None),
        (200, {**SUCCESS, "Message": 5}, None, {"message": "5"}, "Message is a number"),
        (200, {**SUCCESS, "Message": {"a": [1]}}, None, {"message": '{"a":[1]}'}, "Message is an object"),
        (200, {**SUCCESS, "Data": []}, None, {"data_status": None}, "Data is a list, not an object"),
        (
            200,
            {**SUCCESS, "Data": {"Status": True, "SessionID": 1}},
            None,
            {"data_status": "true", "session_id": 1},
            "Data.Status is a boolean",
        ),
        (
            200,
            {**SUCCESS, "Data": {"Status": "True", "Message": {}}},
            None,
            {"data_message": "{}"},
            "Data.Message is an object",
        ),
        (200, {**SUCCESS, "Extra": 1, "Data": {**SUCCESS["Data"], "More": 2}}, None, {"code": 200}, "extra fields: Data.More"),
        # SessionID: a 64-bit integer when it is one, else kept as text.
        (
            200,
            {**SUCCESS, "Data": {"Status": "True", "SessionID": "9223372036854775807"}},
            None,
            {"session_id": 2**63 - 1, "session_id_text": None},
            "Data.SessionID is a string",
        ),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 123.0}}, None, {"session_id": 123}, "written as a float"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 1.23e11}}, None, {"session_id": 123000000000}, "written as a float"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 1.5}}, None, {"session_id_text": "1.5"}, "kept as text"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": True}}, None, {"session_id_text": "true"}, "kept as text"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": "12a"}}, None, {"session_id_text": "12a"}, "kept as text"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": -1}}, None, {"session_id": -1}, "negative"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": -(2**63)}}, None, {"session_id": -(2**63)}, "negative"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 2**63 - 1}}, None, {"session_id": 2**63 - 1}, None),
        (
            200,
            {**SUCCESS, "Data": {"Status": "True", "SessionID": 2**63}},
            None,
            {"session_id": None, "session_id_text": str(2**63)},
            "does not fit 64 bits",
        ),
        (
            200,
            {**SUCCESS, "Data": {"Status": "True", "SessionID": 10**50}},
            None,
            {"session_id": None, "session_id_text": str(10**50)},
            "kept as text",
        ),
        (
            200,
            b'{"Success":true,"Code":200,"Message":"","Data":{"Status":"True","SessionID":1e400}}',
            None,
            {"session_id_text": "1e400"},
            "kept as text",
        ),
        (
            200,
            b'{"Success":true,"Code":200,"Message":"","Data":{"Status":"True","SessionID":NaN}}',
            None,
            {"session_id_text": "NaN"},
            "kept as text",
        ),
    ],
)
def test_parse_envelope_bodies(
    status: int, body: Any, malformed: str | None, fields: dict[str, Any], anomaly: str | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    outcome = parse_envelope(status, raw)
    assert outcome.http_status == status
    assert outcome.malformed == malformed
    for name, value in fields.items():
        assert getattr(outcome, name) == value, name
    if anomaly is None:
        assert outcome.anomalies == ()
    else:
        assert any(anomaly in a for a in outcome.anomalies), outcome.anomalies


def test_an_incomplete_body_is_not_parsed_only_excerpted() -> None:
    raw = json.dumps(SUCCESS).encode()
    outcome = parse_envelope(200, raw, retry_after_s=3.0, incomplete="body too large")
    assert outcome.malformed == "body too large"
    assert (outcome.success, outcome.code, outcome.session_id, outcome.anomalies) == (None, None, None, ())
    assert outcome.body_excerpt == raw.decode()
    assert outcome.retry_after_s == 3.0


def test_an_echoed_key_is_redacted_from_every_text() -> None:
    echo = {**SUCCESS, "Success": False, "Message": f"bad key {KEY}", "Data": {"Status": KEY, "Message": KEY},
            "Version": KEY, KEY: 1}
    outcome = parse_envelope(401, json.dumps(echo).encode(), secret=KEY)
    assert KEY not in repr(outcome) and KEY[:12] not in repr(outcome)
    assert outcome.message == "bad key [redacted]"
    assert outcome.data_status == outcome.data_message == outcome.version == "[redacted]"


def test_a_key_across_the_excerpt_limit_leaves_no_prefix() -> None:
    echo = {**SUCCESS, "Message": f"bad key {KEY}"}
    raw = json.dumps(echo).encode()
    at = raw.index(KEY.encode())
    body = b"x" * (495 - at) + raw  # the key starts 5 characters before the excerpt's end
    outcome = parse_envelope(200, body, secret=KEY)
    assert len(outcome.body_excerpt) == 500
    assert KEY[:5] not in outcome.body_excerpt
    assert outcome.body_excerpt.endswith("[reda")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "Success": _json,
        "Code": _json,
        "Message": _json,
        "Version": _json,
        "Data": st.one_of(
            _json,
            st.fixed_dictionaries({}, optional={"Status": _json, "Message": _json, "SessionID": _json}),
        ),
    },
)


@settings(max_examples=300, database=None, deadline=None)
@given(status=st.integers(min_value=100, max_value=999), body=st.binary(max_size=3000))
def test_parse_envelope_never_raises_for_bytes(status: int, body: bytes) -> None:
    outcome = parse_envelope(status, body, secret=KEY)
    assert outcome.http_status == status
    assert len(outcome.body_excerpt) <= 500


@settings(max_examples=300, database=None, deadline=None)
@given(doc=_envelope_like, cut=st.integers(min_value=0, max_value=400))
def test_parse_envelope_never_raises_for_envelope_like_json(doc: dict[str, Any], cut: int) -> None:
    raw = json.dumps(doc).encode()
    for body in (raw, raw[:cut]):
        outcome = parse_envelope(200, body)
        if outcome.malformed is not None:
            assert outcome.success is None and outcome.code is None and outcome.anomalies == ()
            continue
        assert outcome.success is None or isinstance(outcome.success, bool)
        assert outcome.code is None or type(outcome.code) is int
        assert outcome.session_id is None or -(2**63) <= outcome.session_id < 2**63
        assert outcome.session_id is None or outcome.session_id_text is None
        for text in (outcome.message, outcome.data_status, outcome.data_message, outcome.version,
                     outcome.session_id_text, *outcome.anomalies):
            assert text is None or type(text) is str
