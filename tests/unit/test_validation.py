"""validate(): input that passes is stored exactly (the number in its one canonical E.164 spelling);
every refusal names its field on one line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oaksend.models.records import NewMessage
from oaksend.errors import ValidationError
from oaksend.worker.message.segments import count_segments
from oaksend.worker.message.validation import MAX_BODY_CHARS, SendRequest, validate

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
DEFAULT_DEADLINE_S = 3 * 3600.0
SN = "3254a9d0424c4806b9ea3d0763a1b2c3"
PHONE = "+14155550123"


def request(**fields: Any) -> SendRequest:
    base: dict[str, Any] = {"serial_number": SN, "to": PHONE, "text": "Reminder: tomorrow at 10:00"}
    base.update(fields)
    return SendRequest(**base)


def run(req: SendRequest) -> NewMessage:
    return validate(req, now=NOW, default_deadline_s=DEFAULT_DEADLINE_S)


def refused(req: SendRequest) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        run(req)
    return info.value


# -- what passes is stored exactly -------------------------------------------------------------
def test_valid_input_is_stored_exactly() -> None:
    send_at = NOW + timedelta(hours=1)
    deadline = NOW + timedelta(hours=5)
    meta = {"appointment": 981, "tags": ["a", "b"], "nested": {"ok": True, "none": None, "x": 1.5}}
    row = run(request(text="Hello  there ", idempotency_key="appt-981", send_at=send_at, deadline=deadline,
                      metadata=meta))
    assert row == NewMessage(
        serial_number=SN,
        to_phone=PHONE,
        body="Hello  there ",  # no trimming, no reformatting
        segments=1,
        next_attempt_at=send_at,
        deadline_at=deadline,
        idempotency_key="appt-981",
        meta=meta,
    )


def test_defaults_send_now_with_the_default_deadline() -> None:
    row = run(request())
    assert row.next_attempt_at == NOW
    assert row.deadline_at == NOW + timedelta(seconds=DEFAULT_DEADLINE_S)
    assert row.idempotency_key is None
    assert row.meta is None


def test_default_deadline_counts_from_send_at() -> None:
    send_at = NOW + timedelta(days=2)
    row = run(request(send_at=send_at))
    assert row.deadline_at == send_at + timedelta(seconds=DEFAULT_DEADLINE_S)


def test_send_at_in_another_timezone_is_kept_as_given() -> None:
    tz = timezone(timedelta(hours=-5))
    send_at = datetime(2026, 3, 1, 9, 30, tzinfo=tz)  # 14:30 UTC
    row = run(request(send_at=send_at))
    assert row.next_attempt_at is send_at


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("hi", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("é" * 160, 1),  # é is in the GSM alphabet
        ("ü" * 70 + "ł", 2),  # ł is not: UCS-2, 71 units
        ("€" * 80, 1),  # extension table: 2 septets each
        ("€" * 81, 2),
        ("😀" * 35, 1),  # surrogate pairs: 70 units
        ("😀" * 36, 2),
        ("a" * MAX_BODY_CHARS, 11),
    ],
)
def test_segments_are_counted(text: str, segments: int) -> None:
    row = run(request(text=text))
    assert row.segments == segments == count_segments(text)
    assert row.body == text


# -- refusals ----------------------------------------------------------------------------------
REFUSALS = [
    # serial_number
    ("serial_number", {"serial_number": ""}, "required"),
    ("serial_number", {"serial_number": None}, "required"),
    ("serial_number", {"serial_number": "abc"}, "4-64"),
    ("serial_number", {"serial_number": "a" * 65}, "4-64"),
    ("serial_number", {"serial_number": "abc$def"}, "letters"),
    ("serial_number", {"serial_number": "abc def"}, "letters"),
    ("serial_number", {"serial_number": "-abcd"}, "letters"),
    ("serial_number", {"serial_number": "abcd\n"}, "letters"),
    ("serial_number", {"serial_number": "ａｂｃｄ"}, "letters"),  # full-width letters
    # to
    ("to", {"to": ""}, "required"),
    ("to", {"to": None}, "required"),
    ("to", {"to": "14155550123"}, "E.164"),
    ("to", {"to": "4155550123"}, "E.164"),
    ("to", {"to": "+1 415 555 0123"}, "did you mean +1415****123"),  # masked like the logs
    ("to", {"to": "+1-415-555-0123"}, "E.164"),
    ("to", {"to": " +14155550123"}, "E.164"),
    ("to", {"to": "+14155550123 "}, "E.164"),
    ("to", {"to": "+04155550123"}, "E.164"),
    ("to", {"to": "+1415555012345678"}, "E.164"),
    ("to", {"to": "+١٤١٥٥٥٥٠١٢٣"}, "E.164"),  # Arabic-Indic digits
    ("to", {"to": "+1415555012"}, "not a valid phone number for its country"),
    ("to", {"to": "+4412"}, "E.164"),
    ("to", {"to": "+999123456"}, "not a phone number"),
    # text
    ("text", {"text": ""}, "empty"),
    ("text", {"text": " \t\n "}, "empty"),
    ("text", {"text": None}, "string"),
    ("text", {"text": "a" * (MAX_BODY_CHARS + 1)}, "1601"),
    ("text", {"text": "hello\x00world"}, "NUL"),
    ("text", {"text": "broken \ud800 surrogate"}, "surrogate"),
    # idempotency_key
    ("idempotency_key", {"idempotency_key": ""}, "non-empty"),
    ("idempotency_key", {"idempotency_key": "   "}, "non-empty"),
    ("idempotency_key", {"idempotency_key": 42}, "non-empty"),
    ("idempotency_key", {"idempotency_key": "k" * 256}, "255"),
    ("idempotency_key", {"idempotency_key": "a\nb"}, "printable"),
    ("idempotency_key", {"idempotency_key": "a\x00b"}, "printable"),
    ("idempotency_key", {"idempotency_key": "\ud800"}, "idempotency_key"),
    # send_at / deadline
    ("send_at", {"send_at": datetime(2026, 3, 1, 13, 0)}, "timezone-aware"),
    ("send_at", {"send_at": "2026-03-01T13:00:00+00:00"}, "datetime"),
    ("send_at", {"send_at": NOW + timedelta(days=367)}, "year"),
    ("send_at", {"send_at": NOW - timedelta(days=2)}, "past"),
    ("deadline", {"deadline": datetime(2026, 3, 1, 18, 0)}, "timezone-aware"),
    ("deadline", {"send_at": NOW + timedelta(hours=2), "deadline": NOW + timedelta(hours=1)}, "after send_at"),
    ("deadline", {"send_at": NOW + timedelta(hours=2), "deadline": NOW + timedelta(hours=2)}, "after send_at"),
    ("deadline", {"deadline": NOW - timedelta(minutes=1)}, "after"),
    ("deadline", {"send_at": NOW - timedelta(hours=2), "deadline": NOW - timedelta(hours=1)}, "already passed"),
    # metadata
    ("metadata", {"metadata": ["a", "b"]}, "JSON object"),
    ("metadata", {"metadata": "{}"}, "JSON object"),
    ("metadata", {"metadata": {"when": NOW}}, "JSON-serialisable"),
    ("metadata", {"metadata": {"s": {1, 2}}}, "JSON-serialisable"),
    ("metadata", {"metadata": {"o": object()}}, "JSON-serialisable"),
    ("metadata", {"metadata": {1: "a"}}, "string keys"),
    ("metadata", {"metadata": {"t": (1, 2)}}, "JSON types"),
    ("metadata", {"metadata": {"x": float("nan")}}, "JSON-serialisable"),
    ("metadata", {"metadata": {"x": float("inf")}}, "JSON-serialisable"),
    ("metadata", {"metadata": {"x": "\x00"}}, "NUL"),
    ("metadata", {"metadata": {"x": "\ud800"}}, "metadata"),
    ("metadata", {"metadata": {"x": "y" * (16 * 1024)}}, "larger"),
]


@pytest.mark.parametrize(("field", "fields", "says"), REFUSALS, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refusal_names_the_field_on_one_line(field: str, fields: dict[str, Any], says: str) -> None:
    err = refused(request(**fields))
    assert err.field == field
    text = str(err)
    assert text.startswith(f"{field}: ")
    assert "\n" not in text and "\r" not in text
    assert says in text


def test_text_of_exactly_1600_characters_is_accepted() -> None:
    assert run(request(text="x" * MAX_BODY_CHARS)).body == "x" * MAX_BODY_CHARS


def test_serial_number_length_bounds_are_inclusive() -> None:
    assert run(request(serial_number="abcd")).serial_number == "abcd"
    assert run(request(serial_number="A" * 64)).serial_number == "A" * 64
    assert run(request(serial_number="white-label_01")).serial_number == "white-label_01"


def test_idempotency_key_of_255_characters_is_accepted() -> None:
    assert run(request(idempotency_key="k" * 255)).idempotency_key == "k" * 255


def test_send_at_up_to_a_year_ahead_and_a_day_behind_is_accepted() -> None:
    assert run(request(send_at=NOW + timedelta(days=365))).next_attempt_at == NOW + timedelta(days=365)
    assert run(request(send_at=NOW - timedelta(hours=23))).next_attempt_at == NOW - timedelta(hours=23)


def test_metadata_just_under_the_size_limit_is_accepted() -> None:
    meta = {"x": "y" * (16 * 1024 - 20)}
    assert run(request(metadata=meta)).meta == meta


def test_metadata_holding_a_literal_backslash_u0000_is_not_a_nul() -> None:
    # The six characters \u0000 in a string are ordinary text, not a NUL character.
    meta = {"path": "C:\\u0000\\file"}
    assert run(request(metadata=meta)).meta == meta


def test_pathologically_nested_metadata_is_refused_as_a_validation_error() -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(5000):
        cursor["a"] = {}
        cursor = cursor["a"]
    err = refused(request(metadata=deep))
    assert err.field == "metadata"


def test_the_first_bad_field_is_reported() -> None:
    err = refused(request(serial_number="", to="", text=""))
    assert err.field == "serial_number"


# -- property: exact storage or ValidationError, nothing else -----------------------------------
_VALID_PHONES = ["+14155550123", "+447911123456", "+4930123456", "+861012345678", "+6834002", "+33612345678"]
_any_char = st.characters(exclude_categories=())  # includes lone surrogates and control characters
phones = st.one_of(
    st.sampled_from(_VALID_PHONES),
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    st.from_regex(r"\+(44|49|33|61|39|7)0[1-9][0-9]{7,9}", fullmatch=True),  # trunk zeros typed after the code
    st.text(alphabet=st.sampled_from("+0123456789 -()"), max_size=18),
    st.text(_any_char, max_size=20),
)
serials = st.one_of(
    st.just(SN),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{3,63}", fullmatch=True),
    st.text(_any_char, max_size=70),
)
texts = st.one_of(
    st.text(_any_char, max_size=200),
    st.text(_any_char, min_size=1590, max_size=1610),
    st.text(st.sampled_from("a €😀\x00\ud800 "), max_size=50),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serial=serials, to=phones, text=texts)
def test_validate_stores_exactly_or_raises_validation_error(serial: str, to: str, text: str) -> None:
    try:
        row = validate(SendRequest(serial, to, text), now=NOW, default_deadline_s=DEFAULT_DEADLINE_S)
    except ValidationError as exc:
        assert exc.field in {"serial_number", "to", "text"}
        assert "\n" not in str(exc)
        return
    assert row.serial_number == serial
    # The number's one spelling: what phonenumbers formats as E.164 (a trunk zero after the code dropped).
    assert row.to_phone == phonenumbers.format_number(
        phonenumbers.parse(to, None), phonenumbers.PhoneNumberFormat.E164)
    assert row.body == text
    assert row.segments == count_segments(text) >= 1
    assert row.next_attempt_at == NOW


@pytest.mark.parametrize("to", ["+1 415 555 0123", "+1-415-555-0123", "(415) 555-0123", "+1 (415) 555 0123"])
def test_a_refused_number_is_never_echoed_unmasked(to: str) -> None:
    err = refused(request(to=to))
    digits = "".join(ch for ch in to if ch.isdigit())
    assert digits[-7:] not in str(err).replace(" ", "").replace("-", "")
