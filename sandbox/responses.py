"""The bodies the fake API answers with: envelopes, proxy pages, broken bodies.

Everything a client could meet from the real provider or the proxies in front
of it, built as bytes ready to write. The success body is a byte template
because it is built on every request of a benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from oaksend.sandbox.faults import Outcome

VERSION = "1.0.0"
JSON = "application/json; charset=utf-8"
HTML = "text/html; charset=utf-8"
HUGE_BODY_BYTES = 2 * 1024 * 1024

#: realistic texts for the Twilio codes the project classifies (see newoaks-api.md)
TWILIO_ERRORS = {
    14107: "SMS send rate limit exceeded",
    20429: "Too Many Requests",
    21211: "Invalid 'To' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit",
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    30022: "US A2P 10DLC - Rate Limits Exceeded",
    30034: "US A2P 10DLC - Message from an Unregistered Number",
    30450: "Message delivery blocked (SMS Pumping Protection)",
}


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer, before framing."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def twilio_message(code: int) -> str:
    return f"Twilio error {code}: {TWILIO_ERRORS.get(code, 'Message could not be sent')}"


def envelope(code: int, message: str, data: Any = None, success: bool = False) -> dict[str, Any]:
    return {"Data": data, "Version": VERSION, "Success": success, "Code": code, "Message": message}


def json_response(payload: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), JSON, headers)


def error(status: int, message: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """HTTP ``status`` with the error envelope (Code = status)."""
    return json_response(envelope(status, message or reason(status)), status, headers)


_SUCCESS_HEAD = b'{"Data":{"Status":"True","Message":"","SessionID":'
_SUCCESS_TAIL = b'},"Version":"1.0.0","Success":true,"Code":200,"Message":""}'
_HUGE_FILLER = b"x" * HUGE_BODY_BYTES


def success(session_id: int) -> Response:
    return Response(200, b"%s%d%s" % (_SUCCESS_HEAD, session_id, _SUCCESS_TAIL))


def proxy_page(status: int) -> Response:
    """What nginx or a load balancer answers with for 502/504: HTML, not the envelope."""
    title = f"{status} {reason(status)}"
    body = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(status, body.encode(), HTML)


def too_many_requests(retry_after_s: int | None, message: str = "Too Many Requests") -> Response:
    headers = (("Retry-After", str(retry_after_s)),) if retry_after_s is not None else ()
    return error(429, message, headers)


def malformed(variant: str, session_id: int) -> Response:
    """HTTP 200 with a body that is not the documented envelope (the provider did send: a SessionID was issued).

    A careful client cannot read most of them at all (truncated, html, array, huge, empty:
    ambiguous); ``wrong-types`` and ``missing-fields`` still state success in some field and
    no failure, so they count as sent.
    """
    good = success(session_id).body
    if variant == "truncated":
        return Response(200, good[: len(good) // 2])
    if variant == "html":
        page = "<html><head><title>Maintenance</title></head><body><h1>We'll be back soon</h1></body></html>"
        return Response(200, page.encode(), HTML)
    if variant == "array":
        return Response(200, b"[" + good + b"]")
    if variant == "wrong-types":
        data = {"Status": True, "Message": None, "SessionID": "x"}
        payload: dict[str, Any] = {"Data": data, "Version": 1, "Success": "true", "Code": "abc", "Message": 0}
        return json_response(payload)
    if variant == "missing-fields":
        return json_response({"Data": {"Status": "True"}, "Version": VERSION})
    if variant == "huge":
        # Built from bytes: json.dumps of 2 MB would stall every connection for tens of ms.
        head = b'{"Data":{"Status":"True","Message":"%s","SessionID":%d' % (_HUGE_FILLER, session_id)
        return Response(200, head + _SUCCESS_TAIL)
    if variant == "empty":
        return Response(200, b"")
    raise ValueError(f"unknown malformed variant {variant!r}")


def odd_success(variant: str, session_id: int) -> Response:
    """HTTP 200 that states success but differs from the documented envelope.

    Most variants keep Success true, Code 200 and Status "True" and change one thing the
    documentation does not promise ("all" changes several); the others leave one of those
    three fields out, null or empty (``no-data``, ``data-null``, ``data-empty``, ``no-status``,
    ``status-null``, ``no-code``, ``code-zero``, ``no-success``: the other two still say
    success), or spell the success another way (``status-success``, ``status-one``,
    ``status-ok``). SessionIDs are written as the variant says, derived from ``session_id``.
    """
    digits = str(session_id)
    data: dict[str, Any] = {"Status": "True", "Message": "", "SessionID": session_id}
    top: dict[str, Any] = {"Data": data, "Version": VERSION, "Success": True, "Code": 200, "Message": ""}
    raw_session: str | None = None  # a number literal json.dumps cannot write as such
    changes = {
        "status-bool": lambda: data.update(Status=True),
        "status-spaced": lambda: data.update(Status="  TRUE "),
        "no-message": lambda: top.pop("Message"),
        "message-null": lambda: top.update(Message=None),
        "message-number": lambda: top.update(Message=0),
        "session-string": lambda: data.update(SessionID=digits),
        "session-negative": lambda: data.update(SessionID=-session_id),
        "session-huge": lambda: data.update(SessionID=session_id + 2**64),
        "session-word": lambda: data.update(SessionID=f"sess-{digits}"),
        "code-string": lambda: top.update(Code="200"),
        "code-float": lambda: top.update(Code=200.0),
        "extra-fields": lambda: (top.update(RequestId="r-1", Extra={"a": 1}), data.update(Segments=1)),
        "no-version": lambda: top.pop("Version"),
        "no-data": lambda: top.pop("Data"),
        "data-null": lambda: top.update(Data=None),
        "data-empty": lambda: top.update(Data={}),
        "no-status": lambda: data.pop("Status"),
        "status-null": lambda: data.update(Status=None),
        "no-code": lambda: top.pop("Code"),
        "code-zero": lambda: top.update(Code=0),
        "no-success": lambda: top.pop("Success"),
        "status-success": lambda: data.update(Status="Success"),
        "status-one": lambda: data.update(Status=1),
        "status-ok": lambda: data.update(Status="OK"),
    }
    if variant == "session-float":
        raw_session = f"{digits}.0"
    elif variant == "session-exp":
        raw_session = f"{digits[0]}.{digits[1:]}e{len(digits) - 1}"
    elif variant == "all":
        for name in ("status-bool", "no-message", "code-string", "extra-fields", "no-version"):
            changes[name]()
        raw_session = f"{digits}.0"
    elif variant in changes:
        changes[variant]()
    else:
        raise ValueError(f"unknown odd success variant {variant!r}")
    if raw_session is None:
        return json_response(top)
    data["SessionID"] = "@SESSION@"
    body = json.dumps(top, separators=(",", ":")).replace('"@SESSION@"', raw_session)
    return Response(200, body.encode(), JSON)


def for_outcome(outcome: Outcome, session_id: int | None) -> Response:
    """The answer to a valid request given its (resolved) outcome.

    ``session_id`` is required exactly when ``outcome.issues_session``.
    Hang and reset have no answer: the server handles them on the connection.
    """
    kind = outcome.kind
    if kind == "ok":
        assert session_id is not None
        return success(session_id)
    if kind == "http":
        if outcome.status == 429:
            return too_many_requests(outcome.retry_after)
        if outcome.status in (502, 504):
            return proxy_page(outcome.status)
        return error(outcome.status)
    if kind == "code":
        text = "Internal error" if outcome.status == 500 else reason(outcome.status)
        return json_response(envelope(outcome.status, text))
    if kind == "status-false":
        assert session_id is not None and outcome.twilio_code is not None
        data = {"Status": "False", "Message": twilio_message(outcome.twilio_code), "SessionID": session_id}
        return json_response(envelope(200, "", data, success=True))
    if kind == "twilio":
        assert outcome.twilio_code is not None
        return json_response(envelope(400, twilio_message(outcome.twilio_code)))
    if kind == "malformed":
        assert session_id is not None and outcome.variant is not None
        return malformed(outcome.variant, session_id)
    if kind == "odd-success":
        assert session_id is not None and outcome.variant is not None
        return odd_success(outcome.variant, session_id)
    raise ValueError(f"outcome {outcome.label!r} has no response body")
