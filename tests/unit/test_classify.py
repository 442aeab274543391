"""classify: every row of DESIGN.md's classification table, overrides, Twilio codes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaksend.worker.delivery.classify import (
    TWILIO_FINAL_CODES,
    TWILIO_RETRY_LATER_CODES,
    Decision,
    Verdict,
    classify,
)
from oaksend.worker.newoaks.envelope import parse_envelope
from oaksend.worker.newoaks.outcome import Envelope, TransportError

SENT, RETRY, FINAL, AMBIGUOUS = Verdict.SENT, Verdict.RETRY, Verdict.FINAL, Verdict.AMBIGUOUS

OK = Envelope(
    http_status=200,
    success=True,
    code=200,
    message="",
    data_status="True",
    data_message="test",
    session_id=123123123123,
    version="1.0.0",
    retry_after_s=None,
    malformed=None,
    body_excerpt="{}",
)


def env(**changes: Any) -> Envelope:
    """The documented success envelope, with some fields changed."""
    return replace(OK, **changes)


def page(status: int, retry_after_s: float | None = None) -> Envelope:
    """A non-JSON error page (a proxy's 502, a 429 from a gateway)."""
    return Envelope(
        http_status=status,
        success=None,
        code=None,
        message=None,
        data_status=None,
        data_message=None,
        session_id=None,
        version=None,
        retry_after_s=retry_after_s,
        malformed="html page",
        body_excerpt="<html>",
    )


def failed(message: str = "", data_message: str | None = None, code: int = 200) -> Envelope:
    """An envelope that reports a business failure."""
    return env(
        success=False,
        code=code,
        message=message,
        data_status="False",
        data_message=data_message,
        session_id=None,
    )


# (outcome, expected decision)
TABLE: list[tuple[str, Any, Decision]] = [
    # --- the request never left: RETRY --------------------------------------
    ("connect", TransportError("connect", False, "refused"), Decision(RETRY, "connect")),
    ("dns", TransportError("connect", False, "Name or service not known"), Decision(RETRY, "connect")),
    ("connect_timeout", TransportError("connect_timeout", False, ""), Decision(RETRY, "connect_timeout")),
    ("pool_timeout", TransportError("pool_timeout", False, ""), Decision(RETRY, "pool_timeout")),
    ("tls", TransportError("tls", False, "CERTIFICATE_VERIFY_FAILED"), Decision(RETRY, "tls")),
    # --- may have been received: AMBIGUOUS ------------------------------------
    ("read_timeout", TransportError("read_timeout", True, ""), Decision(AMBIGUOUS, "read_timeout")),
    ("reset", TransportError("reset", True, ""), Decision(AMBIGUOUS, "reset")),
    ("protocol", TransportError("protocol", True, ""), Decision(AMBIGUOUS, "protocol")),
    ("write_timeout", TransportError("write_timeout", True, ""), Decision(AMBIGUOUS, "write_timeout")),
    ("2xx html", page(200), Decision(AMBIGUOUS, "malformed: html page")),
    ("2xx truncated", env(malformed="truncated json"), Decision(AMBIGUOUS, "malformed: truncated json")),
    ("2xx empty", replace(page(200), malformed="empty body"), Decision(AMBIGUOUS, "malformed: empty body")),
    ("2xx too large", replace(page(200), malformed="body too large"), Decision(AMBIGUOUS, "malformed: body too large")),
    ("2xx wrong type", env(malformed="wrong type Success", success=None), Decision(AMBIGUOUS, "malformed: wrong type Success")),
    ("204", replace(page(204), malformed="empty body"), Decision(AMBIGUOUS, "malformed: empty body")),
    # --- HTTP 408, 425, 429, 503: RETRY honouring Retry-After -----------------
    ("408", page(408), Decision(RETRY, "http_408")),
    ("425", page(425), Decision(RETRY, "http_425")),
    ("503", page(503), Decision(RETRY, "http_503")),
    ("503 retry-after", page(503, 30.0), Decision(RETRY, "http_503", retry_after_s=30.0)),
    ("503 retry-after capped", page(503, 86400.0), Decision(RETRY, "http_503", retry_after_s=3600.0)),
    ("503 retry-after nan", page(503, math.nan), Decision(RETRY, "http_503")),
    ("503 retry-after negative", page(503, -1.0), Decision(RETRY, "http_503")),
    ("429", page(429), Decision(RETRY, "http_429", throttled=True, pause_chatbot=True)),
    ("429 retry-after", page(429, 12.0), Decision(RETRY, "http_429", retry_after_s=12.0, throttled=True, pause_chatbot=True)),
    # --- HTTP 500, 502, 504, other 5xx: AMBIGUOUS -----------------------------
    ("500", page(500), Decision(AMBIGUOUS, "http_500")),
    ("502", page(502), Decision(AMBIGUOUS, "http_502")),
    ("504", page(504), Decision(AMBIGUOUS, "http_504")),
    ("507", page(507), Decision(AMBIGUOUS, "http_507")),
    ("599", page(599), Decision(AMBIGUOUS, "http_599")),
    ("502 retry-after kept", page(502, 5.0), Decision(AMBIGUOUS, "http_502", retry_after_s=5.0)),
    # --- HTTP 400, 404, 405, 422, other 4xx: FINAL ----------------------------
    ("400", page(400), Decision(FINAL, "http_400")),
    ("404", page(404), Decision(FINAL, "http_404")),
    ("405", page(405), Decision(FINAL, "http_405")),
    ("422", page(422), Decision(FINAL, "http_422")),
    ("409", page(409), Decision(FINAL, "http_409")),
    ("413", page(413), Decision(FINAL, "http_413")),
    ("400 with envelope", replace(failed(code=400), http_status=400), Decision(FINAL, "http_400")),
    # --- HTTP 401, 403: FINAL and pause the chatbot ---------------------------
    ("401", page(401), Decision(FINAL, "http_401", pause_chatbot=True)),
    ("403", page(403), Decision(FINAL, "http_403", pause_chatbot=True)),
    # --- not in the table: redirects and odd statuses -------------------------
    ("301", page(301), Decision(FINAL, "http_301", pause_chatbot=True)),
    ("308", page(308), Decision(FINAL, "http_308", pause_chatbot=True)),
    ("600", page(600), Decision(AMBIGUOUS, "http_600")),
    ("199", page(199), Decision(AMBIGUOUS, "http_199")),
    # --- HTTP 200, Success true, Code 200, Data.Status "True": SENT -----------
    ("sent", OK, Decision(SENT, "ok")),
    ("sent no session id", env(session_id=None), Decision(SENT, "ok_no_session_id")),
    ("sent status lowercase", env(data_status="true"), Decision(SENT, "ok")),
    ("sent http 201", env(http_status=201), Decision(SENT, "ok")),
    ("sent ignores retry-after", env(retry_after_s=60.0), Decision(SENT, "ok")),
    # A clean success is SENT even if its text happens to hold a code number.
    ("sent despite a code in text", env(data_message="queued 30003"), Decision(SENT, "ok")),
    # --- HTTP 200 with Code != 200: classify Code as the HTTP status ----------
    ("code 429", failed(code=429), Decision(RETRY, "code_429", throttled=True, pause_chatbot=True)),
    ("code 429 retry-after", replace(failed(code=429), retry_after_s=9.0), Decision(RETRY, "code_429", retry_after_s=9.0, throttled=True, pause_chatbot=True)),
    ("code 503", failed(code=503), Decision(RETRY, "code_503")),
    ("code 408", failed(code=408), Decision(RETRY, "code_408")),
    ("code 425", failed(code=425), Decision(RETRY, "code_425")),
    ("code 500", failed(code=500), Decision(AMBIGUOUS, "code_500")),
    ("code 502", failed(code=502), Decision(AMBIGUOUS, "code_502")),
    ("code 504", failed(code=504), Decision(AMBIGUOUS, "code_504")),
    ("code 400", failed(code=400), Decision(FINAL, "code_400")),
    ("code 404", failed(code=404), Decision(FINAL, "code_404")),
    ("code 422", failed(code=422), Decision(FINAL, "code_422")),
    ("code 401", failed(code=401), Decision(FINAL, "code_401", pause_chatbot=True)),
    ("code 403", failed(code=403), Decision(FINAL, "code_403", pause_chatbot=True)),
    # A Code that fails under Success and Data.Status that succeed: the body contradicts itself.
    ("code 500 but success true", env(code=500),
     Decision(AMBIGUOUS, "contradiction", anomaly='contradiction: Success true, Data.Status "True" vs Code 500')),
    # Codes that are not HTTP numbers: Success false says it failed; Code 0 says nothing.
    ("code 0 success false", failed(code=0), Decision(FINAL, "success_false")),
    ("code 1001 success false", failed(code=1001), Decision(FINAL, "code_1001")),
    ("code 1001 alone", env(code=1001, success=None, data_status=None), Decision(AMBIGUOUS, "code_1001")),
    ("code 1001 success true", env(code=1001, data_status=None),
     Decision(AMBIGUOUS, "contradiction", anomaly="contradiction: Success true vs Code 1001")),
    # --- Code 200 but Success false or Data.Status not "True": FINAL ----------
    ("success false", failed(), Decision(FINAL, "success_false")),
    # Success false is the provider's verdict: believed beside Data.Status "True", and noted.
    ("success false status true", env(success=False),
     Decision(FINAL, "success_false", anomaly='Data.Status "True" but Success false: taken as a failure')),
    ("status False", env(data_status="False"), Decision(FINAL, "status_false")),
    ("status Failed", env(data_status="Failed"), Decision(FINAL, "status_false")),
    ("status empty", env(data_status=""),
     Decision(SENT, "ok", anomaly="Data.Status empty: success stated by Success and Code")),
    ("status missing", env(data_status=None),
     Decision(SENT, "ok", anomaly="Data.Status missing: success stated by Success and Code")),
    ("success false no data", env(success=False, data_status=None, data_message=None), Decision(FINAL, "success_false")),
    ("unknown code in text", failed("Twilio error 99999"), Decision(FINAL, "success_false")),
    # ... unless Message holds a retry-later code.
    ("retry-later in Message", failed("Twilio error 30003: unreachable"), Decision(RETRY, "twilio_30003", min_delay_s=300.0)),
    ("retry-later in Data.Message", failed("", "Error 21611"), Decision(RETRY, "twilio_21611", min_delay_s=300.0)),
    ("final in Data.Message", failed("", "Error 21211: invalid To"), Decision(FINAL, "twilio_21211")),
    ("Message before Data.Message", failed("30003", "21610"), Decision(RETRY, "twilio_30003", min_delay_s=300.0)),
    ("first known code wins", failed("ref 12345, then 21610"), Decision(FINAL, "twilio_21610", suppress_number=True)),
    ("code in a longer number ignored", failed("ticket 1216100"), Decision(FINAL, "success_false")),
    ("code glued to letters ignored", failed("E21610x"), Decision(FINAL, "success_false")),
    ("code with punctuation found", failed("(21610)"), Decision(FINAL, "twilio_21610", suppress_number=True)),
    # Twilio codes take precedence over the Code and the HTTP status.
    ("twilio beats code 400", failed("21610", code=400), Decision(FINAL, "twilio_21610", suppress_number=True)),
    ("twilio beats http 500", replace(failed("30001", code=500), http_status=500), Decision(RETRY, "twilio_30001", min_delay_s=300.0)),
    ("retry-after kept on twilio retry", replace(failed("30008"), retry_after_s=42.0), Decision(RETRY, "twilio_30008", retry_after_s=42.0, min_delay_s=300.0)),
    ("pumping floor", failed("30450"), Decision(RETRY, "twilio_30450", min_delay_s=900.0)),
]


@pytest.mark.parametrize(("outcome", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_classification_table(outcome: Any, expected: Decision) -> None:
    assert classify(outcome) == expected


RETRY_LATER = {20429: True, 21611: False, 30001: False, 30003: False, 30008: False, 30022: True, 30450: False, 14107: False}


def test_code_lists_match_the_api_notes() -> None:
    assert TWILIO_RETRY_LATER_CODES == set(RETRY_LATER)
    assert TWILIO_FINAL_CODES == {
        21211, 21408, 21610, 21614, 21617, 30002, 30004, 30005, 30006, 30007, 30034,
    }


@pytest.mark.parametrize(("code", "throttle"), sorted(RETRY_LATER.items()))
def test_retry_later_twilio_codes(code: int, throttle: bool) -> None:
    decision = classify(failed(f"Twilio error {code}: try later"), retry_later_floor_s=120.0)
    assert decision.verdict is RETRY
    assert decision.reason == f"twilio_{code}"
    assert decision.min_delay_s == (900.0 if code == 30450 else 120.0)
    assert decision.throttled is throttle
    assert decision.pause_chatbot is throttle
    assert decision.suppress_number is False


@pytest.mark.parametrize("code", sorted(TWILIO_FINAL_CODES))
def test_final_twilio_codes(code: int) -> None:
    decision = classify(failed("", f"Twilio returned {code}."))
    suppress = code in (21610, 30006)
    assert decision == Decision(FINAL, f"twilio_{code}", suppress_number=suppress)


# --- overrides ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "overrides", "expected"),
    [
        # On the HTTP status.
        (page(500), {500: RETRY}, Decision(RETRY, "http_500")),
        (page(502), {502: FINAL}, Decision(FINAL, "http_502")),
        (page(409), {409: RETRY}, Decision(RETRY, "http_409")),
        (page(401), {401: FINAL}, Decision(FINAL, "http_401", pause_chatbot=True)),
        (page(401), {401: RETRY}, Decision(RETRY, "http_401")),
        (page(429, 10.0), {429: AMBIGUOUS}, Decision(AMBIGUOUS, "http_429", retry_after_s=10.0, throttled=True, pause_chatbot=True)),
        (page(404), {500: RETRY}, Decision(FINAL, "http_404")),  # other numbers untouched
        (page(429, 10.0), {429: FINAL}, Decision(FINAL, "http_429")),
        (page(503, 10.0), {503: AMBIGUOUS}, Decision(AMBIGUOUS, "http_503", retry_after_s=10.0)),
        # On the envelope Code.
        (failed(code=500), {500: FINAL}, Decision(FINAL, "code_500")),
        (failed(code=1001), {1001: RETRY}, Decision(RETRY, "code_1001")),
        (failed(code=409), {409: RETRY}, Decision(RETRY, "code_409")),
        (failed(), {200: RETRY}, Decision(RETRY, "success_false")),
        # On Twilio codes: a listed one, and one only the overrides know.
        (failed("21610"), {21610: RETRY}, Decision(RETRY, "twilio_21610")),
        (failed("30003"), {30003: FINAL}, Decision(FINAL, "twilio_30003")),
        (failed("20429"), {20429: FINAL}, Decision(FINAL, "twilio_20429")),
        (failed("21612 no route"), {21612: FINAL}, Decision(FINAL, "twilio_21612")),
        (failed("21612 no route"), {21612: RETRY}, Decision(RETRY, "twilio_21612")),
        (failed("", "12345"), {12345: SENT}, Decision(SENT, "twilio_12345")),
        # The Twilio code decides before the Code does.
        (failed("21610", code=500), {500: RETRY}, Decision(FINAL, "twilio_21610", suppress_number=True)),
        # Transport errors carry no number.
        (TransportError("read_timeout", True, ""), {200: RETRY}, Decision(AMBIGUOUS, "read_timeout")),
        # A clean success is not overridden through its Code.
        (OK, {200: FINAL}, Decision(SENT, "ok")),
    ],
)
def test_overrides(outcome: Any, overrides: dict[int, Verdict], expected: Decision) -> None:
    assert classify(outcome, overrides=overrides) == expected


def test_retry_after_cap_is_configurable() -> None:
    assert classify(page(503, 500.0), retry_after_cap_s=60.0).retry_after_s == 60.0
    assert classify(page(503, math.inf), retry_after_cap_s=60.0).retry_after_s == 60.0


# --- never raises ---------------------------------------------------------------

_texts = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(sorted(TWILIO_RETRY_LATER_CODES | TWILIO_FINAL_CODES)).map(lambda c: f"err {c}"),
)
_ints = st.one_of(st.none(), st.integers(), st.integers(min_value=-1, max_value=1000))
_floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
_envelopes = st.builds(
    Envelope,
    http_status=st.one_of(st.integers(), st.integers(min_value=100, max_value=700)),
    success=st.one_of(st.none(), st.booleans()),
    code=_ints,
    message=_texts,
    data_status=st.one_of(st.none(), st.sampled_from(["True", "False", "true", ""]), st.text(max_size=8)),
    data_message=_texts,
    session_id=_ints,
    version=st.one_of(st.none(), st.text(max_size=5)),
    retry_after_s=_floats,
    malformed=st.one_of(st.none(), st.sampled_from(["not json", "truncated json", "html page"])),
    body_excerpt=st.text(max_size=10),
)
_transport_errors = st.builds(TransportError, kind=st.text(max_size=12), sent=st.booleans(), detail=st.text(max_size=12))
_overrides = st.one_of(
    st.none(),
    st.dictionaries(st.integers(min_value=0, max_value=99999), st.sampled_from(list(Verdict)), max_size=4),
)


@settings(max_examples=400, database=None, deadline=None)
@given(outcome=st.one_of(_envelopes, _transport_errors), overrides=_overrides)
def test_classify_never_raises(outcome: Any, overrides: dict[int, Verdict] | None) -> None:
    decision = classify(outcome, overrides=overrides)
    assert isinstance(decision.verdict, Verdict)
    assert decision.reason
    if decision.retry_after_s is not None:
        assert 0.0 <= decision.retry_after_s <= 3600.0
    if decision.verdict is SENT:
        assert not (decision.throttled or decision.pause_chatbot or decision.suppress_number)


# --- a plainly stated success is SENT, whatever else is odd (read from real bodies) ---------

_DOC = {"Data": {"Status": "True", "Message": "", "SessionID": 123123123123}, "Version": "1.0.0",
        "Success": True, "Code": 200, "Message": ""}


def _body(*, data: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **top: Any) -> bytes:
    doc: dict[str, Any] = {**_DOC, "Data": {**_DOC["Data"], **(data or {})}, **top}
    for key in drop:
        doc.pop(key)
    return json.dumps(doc).encode()


def _raw_session(literal: str) -> bytes:
    return _body(data={"SessionID": "@"}).replace(b'"@"', literal.encode())


# (name, body, session_id, session_id_text)
ODD_SUCCESSES: list[tuple[str, bytes, int | None, str | None]] = [
    ("documented", _body(), 123123123123, None),
    ("status JSON true", _body(data={"Status": True}), 123123123123, None),
    ("status lower case", _body(data={"Status": "true"}), 123123123123, None),
    ("status upper case and spaces", _body(data={"Status": "  TRUE\t"}), 123123123123, None),
    ("no top-level Message", _body(drop=("Message",)), 123123123123, None),
    ("Message null", _body(Message=None), 123123123123, None),
    ("Message a number", _body(Message=0), 123123123123, None),
    ("Message an object", _body(Message={"detail": "queued"}), 123123123123, None),
    ("Data.Message null", _body(data={"Message": None}), 123123123123, None),
    ("Version missing", _body(drop=("Version",)), 123123123123, None),
    ("Version a number", _body(Version=1), 123123123123, None),
    ("extra unknown fields", _body(RequestId="r-1", Trace={"a": [1]}, data={"Segments": 2}), 123123123123, None),
    ("Code as a numeric string", _body(Code="200"), 123123123123, None),
    ("Code 201 as a string with spaces", _body(Code=" 201 "), 123123123123, None),
    ("Code as 200.0", _body(Code=200.0), 123123123123, None),
    ("Code 202", _body(Code=202), 123123123123, None),
    ("SessionID 123.0", _raw_session("123.0"), 123, None),
    ("SessionID 1.23e11", _raw_session("1.23e11"), 123000000000, None),
    ("SessionID 1.23E+11", _raw_session("1.23E+11"), 123000000000, None),
    ("SessionID a digit string", _body(data={"SessionID": "123123123123"}), 123123123123, None),
    ("SessionID negative", _body(data={"SessionID": -42}), -42, None),
    ("SessionID 2**63 - 1", _body(data={"SessionID": 2**63 - 1}), 2**63 - 1, None),
    ("SessionID 2**63", _body(data={"SessionID": 2**63}), None, str(2**63)),
    ("SessionID 2**64 + 5", _body(data={"SessionID": 2**64 + 5}), None, str(2**64 + 5)),
    ("SessionID below -2**63", _body(data={"SessionID": -(2**63) - 1}), None, str(-(2**63) - 1)),
    ("SessionID 10**60", _raw_session("1" + "0" * 60), None, "1" + "0" * 60),
    ("SessionID 1e400", _raw_session("1e400"), None, "1e400"),
    ("SessionID a fraction", _raw_session("1.5"), None, "1.5"),
    ("SessionID NaN", _raw_session("NaN"), None, "NaN"),
    ("SessionID a word", _body(data={"SessionID": "sess-9f"}), None, "sess-9f"),
    ("SessionID an object", _body(data={"SessionID": {"id": 1}}), None, '{"id":1}'),
    ("SessionID null", _body(data={"SessionID": None}), None, None),
    ("no SessionID", _body(data={"Message": "x"}).replace(b', "SessionID": 123123123123', b""), None, None),
    ("Success as a string", _body(Success="true"), 123123123123, None),
    ("a retry-later code in Data.Message", _body(data={"Message": "queued after 30003"}), 123123123123, None),
    ("everything odd at once", _raw_session("123123123123.0").replace(b'"Status": "True"', b'"Status": true')
     .replace(b'"Code": 200', b'"Code": "200"').replace(b'"Version": "1.0.0", ', b'"X": 1, '), 123123123123, None),
]


@pytest.mark.parametrize(("body", "session_id", "session_id_text"), [r[1:] for r in ODD_SUCCESSES],
                         ids=[r[0] for r in ODD_SUCCESSES])
def test_a_stated_success_is_sent_whatever_else_is_odd(body: bytes, session_id: int | None,
                                                       session_id_text: str | None) -> None:
    outcome = parse_envelope(200, body)
    assert (outcome.malformed, outcome.session_id, outcome.session_id_text) == (None, session_id, session_id_text)
    decision = classify(outcome)
    expected_reason = "ok" if session_id is not None else "ok_session_id_text" if session_id_text else "ok_no_session_id"
    assert decision == Decision(SENT, expected_reason)
    # Overrides of the Code do not undo a stated success either.
    assert classify(outcome, overrides={200: FINAL}).verdict is SENT


# --- shapes of the outcome fields (issue 17): what states success, what states failure -------------
# Success and Data.Status are the provider's verdict fields: a failure in either is believed. Otherwise
# a success stated anywhere is SENT, unless Code (or a Twilio code in a text) says failure: AMBIGUOUS.
GONE: Any = object()  #: a key left out of the body
STOP = "Twilio error 21610: Attempt to send to unsubscribed recipient"


def _shape(*, status: Any = "True", **top: Any) -> bytes:
    """The documented success with Data.Status and top-level fields changed; GONE leaves one out."""
    data = {"Status": status, "Message": "", "SessionID": 123123123123}
    doc: dict[str, Any] = {**_DOC, "Data": {k: v for k, v in data.items() if v is not GONE}, **top}
    return json.dumps({k: v for k, v in doc.items() if v is not GONE}).encode()


def _sent(anomaly: str, reason: str = "ok") -> Decision:
    return Decision(SENT, reason, anomaly=anomaly)


def _contradiction(anomaly: str) -> Decision:
    return Decision(AMBIGUOUS, "contradiction", anomaly=f"contradiction: {anomaly}")


BY_SUCCESS, BY_STATUS = "success stated by Success and Code", "success stated by Success and Data.Status"
# Some fields state success, the rest state nothing: SENT, the gap noted for the attempt's anomalies.
STATED_SUCCESSES: list[tuple[str, bytes, Decision]] = [
    ("Data missing", _shape(Data=GONE), _sent(f"Data missing: {BY_SUCCESS}", "ok_no_session_id")),
    ("Data null", _shape(Data=None), _sent(f"Data null: {BY_SUCCESS}", "ok_no_session_id")),
    ("Data {}", _shape(Data={}), _sent(f"Data empty: {BY_SUCCESS}", "ok_no_session_id")),
    ("Data a list", _shape(Data=[1]), _sent(f"Data not an object: {BY_SUCCESS}", "ok_no_session_id")),
    ("Data.Status missing", _shape(status=GONE), _sent(f"Data.Status missing: {BY_SUCCESS}")),
    ("Data.Status null", _shape(status=None), _sent(f"Data.Status null: {BY_SUCCESS}")),
    ("Data.Status blank", _shape(status="  "), _sent(f"Data.Status empty: {BY_SUCCESS}")),
    ("Code missing", _shape(Code=GONE), _sent(f"Code missing: {BY_STATUS}")),
    ("Code null", _shape(Code=None), _sent(f"Code null: {BY_STATUS}")),
    ("Code 0", _shape(Code=0), _sent(f"Code 0: {BY_STATUS}")),
    ("Code 'abc'", _shape(Code="abc"), _sent(f"Code unreadable: {BY_STATUS}")),
    ("Success missing", _shape(Success=GONE), _sent("Success missing: success stated by Code and Data.Status")),
    ("Success null", _shape(Success=None), _sent("Success null: success stated by Code and Data.Status")),
    ("Success 'yes'", _shape(Success="yes"), _sent("Success unreadable: success stated by Code and Data.Status")),
    ("Status 'Success'", _shape(status="Success"), _sent('Data.Status "Success" read as success')),
    ("Status 'success'", _shape(status="success"), _sent('Data.Status "success" read as success')),
    ("Status 1", _shape(status=1), _sent('Data.Status "1" read as success')),
    ("Status '1'", _shape(status="1"), _sent('Data.Status "1" read as success')),
    ("Status 'OK'", _shape(status="OK"), _sent('Data.Status "OK" read as success')),
    ("Status ' Sent '", _shape(status=" Sent "), _sent('Data.Status "Sent" read as success')),
    ("Status 'Succeeded'", _shape(status="Succeeded"), _sent('Data.Status "Succeeded" read as success')),
    ("Code missing, Status 'Success'", _shape(Code=GONE, status="Success"),
     _sent(f'Code missing: {BY_STATUS}; Data.Status "Success" read as success')),
    ("Code 0, Data missing", _shape(Code=0, Data=GONE),
     _sent("Code 0, Data missing: success stated by Success", "ok_no_session_id")),
    ("Code 201, Data missing", _shape(Code=201, Data=GONE), _sent(f"Data missing: {BY_SUCCESS}", "ok_no_session_id")),
    ("Code 200 alone", _shape(Success=GONE, Data=GONE),
     _sent("Success missing, Data missing: success stated by Code", "ok_no_session_id")),
    ("Success true alone", _shape(Code=GONE, Data=None),
     _sent("Code missing, Data null: success stated by Success", "ok_no_session_id")),
    ("Data.Status alone", _shape(Success=GONE, Code=GONE),
     _sent("Success missing, Code missing: success stated by Data.Status")),
    ("Success 'true' as text, no Code", _shape(Success="true", Code=GONE), _sent(f"Code missing: {BY_STATUS}")),
]

# The mirror images: the fields that state anything state failure (or the most specific one does).
FAILURES: list[tuple[str, bytes, Decision]] = [
    ("Success false, Data missing", _shape(Success=False, Data=GONE), Decision(FINAL, "success_false")),
    ("Success false, Data null", _shape(Success=False, Data=None), Decision(FINAL, "success_false")),
    ("Success false, Data {}", _shape(Success=False, Data={}), Decision(FINAL, "success_false")),
    ("Success false, Status missing", _shape(Success=False, status=GONE), Decision(FINAL, "success_false")),
    ("Success false, Status null", _shape(Success=False, status=None), Decision(FINAL, "success_false")),
    ("Success 'false', Status False", _shape(Success="false", status="False"), Decision(FINAL, "success_false")),
    ("Success false, Code 0, Status False", _shape(Success=False, Code=0, status="False"),
     Decision(FINAL, "success_false")),
    # Status "False" under Success true and Code 200: the call went through, the send failed.
    ("Status False", _shape(status="False"), Decision(FINAL, "status_false")),
    ("Status False, Code missing", _shape(status="False", Code=GONE), Decision(FINAL, "status_false")),
    ("Status False, Code 0", _shape(status="False", Code=0), Decision(FINAL, "status_false")),
    ("Status False, Success missing", _shape(status="False", Success=GONE), Decision(FINAL, "status_false")),
    ("Status JSON false", _shape(status=False), Decision(FINAL, "status_false")),
    ("Status 0", _shape(status=0), Decision(FINAL, "status_false")),
    ("Status '0'", _shape(status="0"), Decision(FINAL, "status_false")),
    ("Status 'Failed'", _shape(status="Failed"), Decision(FINAL, "status_false")),
    ("Status 'Queued'", _shape(status="Queued"), Decision(FINAL, "status_false")),
    ("Code 400, Success false, Data null", _shape(Code=400, Success=False, Data=None), Decision(FINAL, "code_400")),
    ("Code '400', Success false, Status False", _shape(Code="400", Success=False, status="False"),
     Decision(FINAL, "code_400")),
    ("Code 500, Success false, Data null", _shape(Code=500, Success=False, Data=None), Decision(AMBIGUOUS, "code_500")),
    ("Code '500' alone", _shape(Code="500", Success=GONE, Data=GONE), Decision(AMBIGUOUS, "code_500")),
    ("Code 429, Success false", _shape(Code=429, Success=False, Data=None),
     Decision(RETRY, "code_429", throttled=True, pause_chatbot=True)),
    ("Code 401 alone", _shape(Code=401, Success=GONE, Data=GONE), Decision(FINAL, "code_401", pause_chatbot=True)),
    ("Code beyond 64 bits, Success false", _shape(Code=2**70, Success=False, status="False"),
     Decision(FINAL, f"code_{str(2**70)[:17]}...")),
    ("Code 1001 alone", _shape(Code=1001, Success=GONE, Data=GONE), Decision(AMBIGUOUS, "code_1001")),
    ("STOP in Message, nothing else", _shape(Success=GONE, Code=GONE, Data=None, Message=STOP),
     Decision(FINAL, "twilio_21610", suppress_number=True)),
    ("retry-later in Message, Success false", _shape(Success=False, Data=None, Message="Twilio error 30003"),
     Decision(RETRY, "twilio_30003", min_delay_s=300.0)),
    # Success false beside Data.Status success: the provider's verdict field says failed, so no resend;
    # the overruled success is noted for `oaksend anomalies`.
    ("Success false, Status True", _shape(Success=False),
     Decision(FINAL, "success_false", anomaly='Data.Status "True" but Success false: taken as a failure')),
    ("Success 'false', Status 'Success', no Code", _shape(Success="false", status="Success", Code=GONE),
     Decision(FINAL, "success_false", anomaly='Data.Status "Success" but Success false: taken as a failure')),
    ("Code 500, Success false, Status True", _shape(Code=500, Success=False),
     Decision(AMBIGUOUS, "code_500", anomaly='Data.Status "True" but Success false: taken as a failure')),
    ("Code beyond 64 bits, Success false, Status True", _shape(Code=2**70, Success=False),
     Decision(FINAL, f"code_{str(2**70)[:17]}...", anomaly='Data.Status "True" but Success false: taken as a failure')),
]

# Success or Data.Status says success, neither says failure, but Code does (or a text holds a Twilio
# code): it may or may not have gone out, so the ambiguity policy decides.
CONTRADICTIONS: list[tuple[str, bytes, Decision]] = [
    ("Code 500, Success true, Status True", _shape(Code=500),
     _contradiction('Success true, Data.Status "True" vs Code 500')),
    ("Code '400', Success true, Data missing", _shape(Code="400", Data=GONE),
     _contradiction("Success true vs Code 400")),
    ("Code 429, Success true, Status True", _shape(Code=429),
     _contradiction('Success true, Data.Status "True" vs Code 429')),
    ("Code beyond 32 bits, Success true", _shape(Code=2**33),
     _contradiction(f'Success true, Data.Status "True" vs Code {2**33}')),
    ("STOP in Message, Data missing", _shape(Data=GONE, Message=STOP),
     _contradiction("Success true, Code 200 vs Twilio code 21610 in a message text")),
]

# Nothing stated, or nothing readable: nobody can tell.
CANNOT_TELL: list[tuple[str, bytes, Decision]] = [
    ("empty object", b"{}", Decision(AMBIGUOUS, "no_statement",
                                     anomaly="nothing stated: Success missing, Code missing, Data missing")),
    ("all null", _shape(Success=None, Code=None, Data=None),
     Decision(AMBIGUOUS, "no_statement", anomaly="nothing stated: Success null, Code null, Data null")),
    ("Code 0, Data {}", _shape(Success=GONE, Code=0, Data={}),
     Decision(AMBIGUOUS, "no_statement", anomaly="nothing stated: Success missing, Code 0, Data empty")),
    ("truncated success", _body()[:60], Decision(AMBIGUOUS, "malformed: truncated json")),
]

SHAPES = STATED_SUCCESSES + FAILURES + CONTRADICTIONS + CANNOT_TELL


@pytest.mark.parametrize(("body", "expected"), [r[1:] for r in SHAPES], ids=[r[0] for r in SHAPES])
def test_outcome_field_shapes(body: bytes, expected: Decision) -> None:
    outcome = parse_envelope(200, body)
    assert outcome.malformed is None or expected.reason.startswith("malformed")
    assert classify(outcome) == expected


@pytest.mark.parametrize("body", [r[1] for r in STATED_SUCCESSES + CONTRADICTIONS],
                         ids=[r[0] for r in STATED_SUCCESSES + CONTRADICTIONS])
def test_overrides_never_undo_a_stated_success_nor_settle_a_contradiction(body: bytes) -> None:
    outcome = parse_envelope(200, body)
    expected = classify(outcome)
    every_number = {n: FINAL for n in (0, 200, 201, 400, 429, 500, 1001, 21610, 2**33)}
    assert classify(outcome, overrides=every_number) == expected


NOTED = [r for r in SHAPES if r[2].anomaly is not None]


@pytest.mark.parametrize(("body", "expected"), [(r[1], r[2]) for r in NOTED], ids=[r[0] for r in NOTED])
def test_the_note_reaches_the_attempt_after_the_parsers(body: bytes, expected: Decision) -> None:
    from datetime import UTC, datetime

    from oaksend.worker.delivery.transition import attempt_record

    outcome = parse_envelope(200, body)
    record = attempt_record(outcome, classify(outcome), number=1, started_at=datetime(2026, 1, 1, tzinfo=UTC),
                            latency_ms=1.0, worker="w")
    assert expected.anomaly is not None
    # (fit_attempt may add its own notes after these: a Code beyond 32 bits is stored as null.)
    assert record.anomalies is not None
    assert record.anomalies.startswith("; ".join([*outcome.anomalies, expected.anomaly]))


def test_a_plain_success_or_failure_notes_nothing() -> None:
    for body in (_body(), _shape(status="False"), _shape(Success=False, status="False"), _shape(status=" true ")):
        assert classify(parse_envelope(200, body)).anomaly is None


def test_odd_success_shapes_of_the_sandbox_are_sent() -> None:
    """The shapes the integration test serves through the real sandbox, read here without I/O."""
    from oaksend.sandbox.faults import LOOSE_SUCCESS_VARIANTS, ODD_SUCCESS_VARIANTS
    from oaksend.sandbox.responses import odd_success

    for variant in ODD_SUCCESS_VARIANTS + LOOSE_SUCCESS_VARIANTS:
        outcome = parse_envelope(200, odd_success(variant, 123123123124).body)
        decision = classify(outcome)
        assert decision.verdict is SENT, variant
        assert (decision.anomaly is not None) is (variant in LOOSE_SUCCESS_VARIANTS), variant
