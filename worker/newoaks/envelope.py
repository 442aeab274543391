"""The response envelope of SendTwilioMessage, read leniently.

``parse_envelope`` never raises. A body that is a JSON object is read field by
field, as far as each field goes: a ``Code`` written as ``"200"`` or ``200.0`` is
200, a ``Data.Status`` given as JSON ``true`` is ``"true"``, a ``SessionID``
that does not fit a signed 64-bit integer (``2**64``, ``1.5``, ``"abc-1"``) is
kept as text. Whatever was odd is listed in ``Envelope.anomalies`` for the
audit trail; it is never a reason by itself to doubt a send. Only a body that
cannot be read as an object at all (not JSON, truncated, an HTML page, cut off)
is ``malformed``. ``Envelope.absent`` says, for each of the three fields that
state an outcome (Success, Code, Data.Status), why it holds no value ("Data
null", "Data.Status missing", ...), so that a verdict can name what was missing.

Deciding what a reading means is ``worker.classify``'s job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = ["INT64_MAX", "INT64_MIN", "Envelope", "parse_envelope"]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_EXCERPT_CHARS: Final = 500  #: body characters kept for the audit trail
_SHOWN_CHARS: Final = 40  #: longest piece of an odd value quoted in an anomaly
_REDACTED: Final = "[redacted]"
#: Integer literals longer than this stay text: int() of thousands of digits is slow,
#: and no Code or SessionID is meant to be that long.
_MAX_INT_DIGITS: Final = 40
_LITERAL_PREFIXES: Final = frozenset(
    word[:i] for word in ("true", "false", "null") for i in range(1, len(word))
)
_INT_TEXT = re.compile(r"[+-]?\d{1,40}", re.ASCII)
_KNOWN_TOP: Final = frozenset({"Data", "Version", "Success", "Code", "Message"})
_KNOWN_DATA: Final = frozenset({"Status", "Message", "SessionID"})


@dataclass(frozen=True)
class Envelope:
    """What came back over HTTP, read as far as possible.

    ``malformed`` is None when the body is a JSON object; otherwise it is a
    short reason ("not json", "truncated json", "not an object", "body too
    large", "empty body", "html page", ...) and the fields are None.
    ``anomalies`` lists what differed from the documented envelope but could
    still be read ("Code is a string", "Data.SessionID does not fit 64 bits").
    """

    http_status: int
    success: bool | None
    code: int | None  #: any size; the audit row clamps it
    message: str | None  #: the envelope's Message (a non-string is given as its JSON text)
    data_status: str | None  #: Data.Status (JSON true/false as "true"/"false")
    data_message: str | None  #: Data.Message
    session_id: int | None  #: Data.SessionID when it fits a signed 64-bit integer
    version: str | None
    retry_after_s: float | None  #: the Retry-After header, in seconds from the response
    malformed: str | None
    body_excerpt: str  #: the body's first characters, for the audit trail
    session_id_text: str | None = None  #: Data.SessionID as text, when it is not a 64-bit integer
    anomalies: tuple[str, ...] = ()
    #: The outcome fields with no value, and why, in the order Success, Code, Data:
    #: "Success missing" | "Success null" | "Success unreadable", "Code missing" | "Code null" |
    #: "Code unreadable", "Data missing" | "Data null" | "Data not an object" | "Data empty" |
    #: "Data.Status missing" | "Data.Status null" | "Data.Status empty". Empty for a malformed body.
    absent: tuple[str, ...] = ()


class _Literal(str):
    """A JSON number kept as its own text: a float, a very long integer, NaN or Infinity."""


def _int_or_literal(text: str) -> int | _Literal:
    return int(text) if len(text.lstrip("-")) <= _MAX_INT_DIGITS else _Literal(text)


# Built once: json.loads(..., parse_float=...) would build a decoder on every call.
_DECODER: Final = json.JSONDecoder(parse_int=_int_or_literal, parse_float=_Literal, parse_constant=_Literal)


def _loads(raw: bytes) -> Any:
    """json.loads, keeping float and overlong integer literals as their text."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def parse_envelope(
    http_status: int,
    body: bytes,
    *,
    retry_after_s: float | None = None,
    incomplete: str | None = None,
    secret: str | None = None,
) -> Envelope:
    """Parse a response body into an :class:`Envelope`; never raises.

    Args:
        http_status: the response's status code.
        body: the body bytes read (possibly cut short).
        retry_after_s: the already parsed Retry-After, carried along.
        incomplete: why the body is not whole ("body too large", "body read
            failed: ..."), if so; the body is then not parsed, only excerpted.
        secret: a string to cut out of every text taken from the body (the API
            key, in case an error page echoes the request headers).
    """
    # Redact before cutting the excerpt, so no prefix of the key survives.
    head = body[: _EXCERPT_CHARS * 4 + len(secret or "")].decode("utf-8", errors="replace")
    excerpt = _redact(head, secret)[:_EXCERPT_CHARS]
    reading = _Reading()
    malformed = incomplete if incomplete is not None else _read(body, reading)
    f = reading.fields
    for name in ("message", "data_status", "data_message", "version", "session_id_text"):
        if f.get(name) is not None:
            f[name] = _redact(f[name], secret)
    return Envelope(
        http_status=http_status,
        success=f.get("success"),
        code=f.get("code"),
        message=f.get("message"),
        data_status=f.get("data_status"),
        data_message=f.get("data_message"),
        session_id=f.get("session_id"),
        version=f.get("version"),
        retry_after_s=retry_after_s,
        malformed=malformed,
        body_excerpt=excerpt,
        session_id_text=f.get("session_id_text"),
        anomalies=tuple(_redact(a, secret) for a in reading.odd),
        absent=tuple(reading.absent),
    )


class _Reading:
    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.odd: list[str] = []
        self.absent: list[str] = []


def _read(body: bytes, reading: _Reading) -> str | None:
    """Fill ``reading`` from the body; return why it is not an object, or None."""
    text = body.strip()
    if not text:
        return "empty body"
    if text.startswith(b"<"):
        return "html page" if b"html" in text[:1024].lower() else "not json"
    try:
        doc = _loads(text)
    except json.JSONDecodeError as exc:
        tail = exc.doc[exc.pos :].strip()
        if exc.msg.startswith("Unterminated string") or not tail or tail in _LITERAL_PREFIXES:
            return "truncated json"
        return "not json"
    except (ValueError, RecursionError):
        # Bytes that are not UTF-8/16/32, or nesting deeper than the stack.
        return "not json"
    if not isinstance(doc, dict):
        return "not an object"

    f, odd = reading.fields, reading.odd
    f["success"] = _success(doc, odd)
    f["code"] = _code(doc, odd)
    f["message"] = _text(doc, "Message", "Message", odd, note_missing=True)
    f["version"] = _text(doc, "Version", "Version", odd, note_missing=True)
    data = doc.get("Data")
    if "Data" not in doc:
        odd.append("no Data")
    elif data is not None and not isinstance(data, dict):
        odd.append(f"Data is {_kind(data)}, not an object")
        data = None
    if data:
        f["data_status"] = _text(data, "Status", "Data.Status", odd, note_missing=True)
        f["data_message"] = _text(data, "Message", "Data.Message", odd, note_missing=False)
        f["session_id"], f["session_id_text"] = _session_id(data, odd)
        _extra(data, _KNOWN_DATA, "Data.", odd)
    _extra(doc, _KNOWN_TOP, "", odd)
    reading.absent = _absent(doc, f)
    return None


def _absent(doc: dict[str, Any], f: dict[str, Any]) -> list[str]:
    """Why Success, Code and Data.Status hold no value, for each that holds none."""
    out = [f"{key} {'missing' if key not in doc else 'null' if doc[key] is None else 'unreadable'}"
           for key, name in (("Success", "success"), ("Code", "code")) if f.get(name) is None]
    data = doc.get("Data")
    if "Data" not in doc or data is None:
        out.append("Data missing" if "Data" not in doc else "Data null")
    elif not isinstance(data, dict):
        out.append("Data not an object")
    elif not data:
        out.append("Data empty")
    elif data.get("Status") is None:
        out.append("Data.Status missing" if "Status" not in data else "Data.Status null")
    elif isinstance(data["Status"], str) and not data["Status"].strip():
        out.append("Data.Status empty")
    return out


def _success(doc: dict[str, Any], odd: list[str]) -> bool | None:
    if "Success" not in doc:
        odd.append("no Success")
        return None
    value = doc["Success"]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        odd.append("Success is a string")
        return value.strip().lower() == "true"
    odd.append(f"Success is {_kind(value)}: {_shown(value)}")
    return None


def _code(doc: dict[str, Any], odd: list[str]) -> int | None:
    if "Code" not in doc:
        odd.append("no Code")
        return None
    value = doc["Code"]
    if isinstance(value, bool) or value is None:
        odd.append(f"Code is {_kind(value)}")
        return None
    if isinstance(value, _Literal):
        number = _integral(value)
        if number is None:
            odd.append(f"Code is not an integer: {_shown(value)}")
            return None
        odd.append("Code is written as a float")
        return number
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        odd.append("Code is a string")
        return int(value.strip())
    odd.append(f"Code is {_kind(value)}: {_shown(value)}")
    return None


def _text(obj: dict[str, Any], key: str, label: str, odd: list[str], *, note_missing: bool) -> str | None:
    """A text field; a non-string value is kept as its JSON text, and noted."""
    if key not in obj:
        if note_missing:
            odd.append(f"no {label}")
        return None
    value = obj[key]
    if value is None or (isinstance(value, str) and not isinstance(value, _Literal)):
        return value
    odd.append(f"{label} is {_kind(value)}")
    return _json_text(value)


def _session_id(data: dict[str, Any], odd: list[str]) -> tuple[int | None, str | None]:
    """(the SessionID as a 64-bit integer, or else as text); noting anything odd."""
    value = data.get("SessionID")
    if value is None:
        return None, None
    number: int | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, _Literal):
        number = _integral(value)
        if number is not None:
            odd.append("Data.SessionID is written as a float")
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        # Some serializers send 64-bit ids as strings so that JavaScript keeps every digit.
        odd.append("Data.SessionID is a string")
        number = int(value.strip())
    if number is not None and INT64_MIN <= number <= INT64_MAX:
        if number < 0:
            odd.append("Data.SessionID is negative")
        return number, None
    if number is not None:
        odd.append("Data.SessionID does not fit 64 bits; kept as text")
        return None, str(number)
    odd.append(f"Data.SessionID is {_kind(value)}, not a 64-bit integer; kept as text")
    return None, str(value) if isinstance(value, str) else _json_text(value)


def _integral(literal: str) -> int | None:
    """The integer a number literal such as "123.0" or "1.23e11" stands for; None otherwise."""
    try:
        number = Decimal(literal)
    except (InvalidOperation, ValueError):
        return None
    # adjusted() is the exponent of the leading digit: refuse to build a huge int.
    if not number.is_finite() or number.adjusted() > _MAX_INT_DIGITS:
        return None
    if number != number.to_integral_value():
        return None
    return int(number)


def _extra(obj: dict[str, Any], known: frozenset[str], prefix: str, odd: list[str]) -> None:
    extra = [str(k) for k in obj if k not in known]
    if extra:
        names = ", ".join(prefix + k for k in extra[:5])
        odd.append(f"extra fields: {_shorten(names, 120)}{' ...' if len(extra) > 5 else ''}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, _Literal | int):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return "a list"


def _json_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Literal | int):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, RecursionError):  # pragma: no cover - it came from json.loads
        return repr(value)


def _shown(value: Any) -> str:
    return _shorten(_json_text(value) if not isinstance(value, str) or isinstance(value, _Literal)
                    else json.dumps(value, ensure_ascii=False), _SHOWN_CHARS)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, _REDACTED) if secret else text
