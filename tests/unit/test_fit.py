"""models.fit: every value of an attempt row fits its column, whatever it was."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from oaksend.models.fit import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, clean_text, fit_attempt
from oaksend.models.records import AttemptRecord

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
BASE = AttemptRecord(number=1, started_at=NOW, latency_ms=1.0, classification="sent", reason="ok", http_status=200,
                     success=True, code=200, message="", data_status="True", data_message="", session_id=1,
                     worker="w")

_texts = st.one_of(st.none(), st.text(max_size=3000), st.text(min_size=1990, max_size=2100), st.sampled_from(["\x00", "\ud800", "a\x00\udfff", "é" * 70]))
_ints = st.one_of(st.none(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70))


def test_a_record_that_fits_is_returned_as_is() -> None:
    assert fit_attempt(BASE) is BASE


def test_clean_text() -> None:
    assert clean_text("a\x00b") == "a\\x00b"
    assert clean_text("x\ud800y") == "x\\ud800y"
    assert clean_text(12) == "12"
    assert clean_text("plain") == "plain"


@settings(max_examples=300, database=None, deadline=None)
@given(message=_texts, data_status=_texts, data_message=_texts, reason=st.text(max_size=3000), worker=_texts,
       code=_ints, http_status=_ints, session_id=_ints, number=st.integers(), anomalies=_texts,
       latency=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_every_value_fits(message: str | None, data_status: str | None, data_message: str | None, reason: str,
                          worker: str | None, code: int | None, http_status: int | None, session_id: int | None,
                          number: int, anomalies: str | None, latency: float | None) -> None:
    raw = AttemptRecord(number=number, started_at=NOW, latency_ms=latency, classification="final", reason=reason,
                        http_status=http_status, code=code, message=message, data_status=data_status,
                        data_message=data_message, session_id=session_id, worker=worker, anomalies=anomalies)
    fitted = fit_attempt(raw)
    assert fit_attempt(fitted) == fitted  # idempotent
    for value in (fitted.number, fitted.http_status, fitted.code):
        assert value is None or INT32_MIN <= value <= INT32_MAX
    assert fitted.session_id is None or INT64_MIN <= fitted.session_id <= INT64_MAX
    if session_id is not None and fitted.session_id is None:
        assert fitted.session_id_text == str(session_id)  # kept as text, never lost
    for text, limit in ((fitted.message, 2000), (fitted.data_status, 64), (fitted.data_message, 2000),
                        (fitted.reason, 2000), (fitted.worker, 200), (fitted.anomalies, 2000)):
        if text is not None:
            assert len(text) <= limit and "\x00" not in text
            text.encode("utf-8")  # never a lone surrogate
    if code is not None and not INT32_MIN <= code <= INT32_MAX:
        assert fitted.anomalies and "does not fit 32 bits" in fitted.anomalies
    assert fitted.latency_ms is None or fitted.latency_ms == latency


def test_the_limits_are_the_table_columns() -> None:
    """fit clamps to the same lengths the attempt table's columns have (Text: TEXT_MAX_CHARS)."""
    from oaksend.models.fit import STRING_LIMITS, TEXT_MAX_CHARS
    from oaksend.models.tables import Attempt

    columns = Attempt.__table__.c
    assert STRING_LIMITS == {name: getattr(columns[name].type, "length", None) or TEXT_MAX_CHARS
                             for name in STRING_LIMITS}
    assert {name for name in STRING_LIMITS if getattr(columns[name].type, "length", None)} == {
        "data_status", "classification", "worker"}
