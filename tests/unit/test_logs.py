"""Log redaction: phone numbers masked, the API key never written, on a real logging handler."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from oaksend.worker.logs import RedactingFilter, install_redaction, mask_phone, redact

KEY = "sk-live-7f3a9c2e1b"
PHONE = "+14155550123"


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+14155550123", "+1415****123"),
        ("+447911123456", "+4479*****456"),
        ("+861012345678", "+8610*****678"),
        ("+123456789012345", "+1234********345"),
        ("+123456", "+******"),
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize("digits", range(7, 16))
def test_mask_phone_hides_enough_digits_to_stop_dialling(digits: int) -> None:
    # +683 4002 (Niue) is a valid 7-digit E.164 number; short numbers must be masked too.
    phone = "+" + "".join(str((i % 9) + 1) for i in range(digits))
    masked = mask_phone(phone)
    assert masked != phone
    assert len(masked) == len(phone)
    assert masked.count("*") >= 3


def test_mask_phone_of_a_real_short_number() -> None:
    assert mask_phone("+6834002") != "+6834002"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"sending to {PHONE} now", "sending to +1415****123 now"),
        (f"{PHONE},+447911123456", "+1415****123,+4479*****456"),
        (f"to={PHONE}.", "to=+1415****123."),
        (f"key={KEY} to {PHONE}", "key=[redacted] to +1415****123"),
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer [redacted]"),
        # dates, times, offsets, ids and short codes are not phone numbers
        ("2026-03-01 12:00:00,123", "2026-03-01 12:00:00,123"),
        ("2026-03-01T12:00:00+00:00", "2026-03-01T12:00:00+00:00"),
        ("at 2026-03-01T12:00:00+0000 took 1234567 ms", "at 2026-03-01T12:00:00+0000 took 1234567 ms"),
        ("SessionID 123123123123 attempt 3", "SessionID 123123123123 attempt 3"),
        ("delta +12345 s", "delta +12345 s"),
        ("", ""),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line, (KEY,)) == expected


def test_redact_without_secrets_keeps_other_text() -> None:
    assert redact(f"key={KEY}") == f"key={KEY}"
    assert redact(f"key={KEY}", ("",)) == f"key={KEY}"  # an empty secret must not blank the line


def test_redact_removes_every_occurrence_of_every_secret() -> None:
    out = redact(f"{KEY} {KEY} other-secret", (KEY, "other-secret"))
    assert KEY not in out and "other-secret" not in out
    assert out.count("[redacted]") == 3


# -- on a real handler ---------------------------------------------------------------------------
@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter((KEY,)))
    logger = logging.getLogger("oaksend.test.logs")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()


def test_filter_masks_arguments_and_removes_the_key(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("sending %s with key %s", PHONE, KEY)
    out = stream.getvalue()
    assert out == "INFO oaksend.test.logs sending +1415****123 with key [redacted]\n"


def test_filter_redacts_exception_tracebacks(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    def call_api(phone: str, key: str) -> None:
        raise RuntimeError(f"POST failed for {phone} using {key}")

    try:
        call_api(PHONE, KEY)
    except RuntimeError:
        logger.exception("send to %s failed", PHONE)
    out = stream.getvalue()
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: POST failed for +1415****123 using [redacted]" in out
    assert PHONE not in out and KEY not in out
    assert out.startswith("ERROR oaksend.test.logs send to +1415****123 failed\n")


def test_filter_redacts_chained_exceptions(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        try:
            raise ValueError(f"bad key {KEY}")
        except ValueError as inner:
            raise RuntimeError(f"while texting {PHONE}") from inner
    except RuntimeError:
        logger.error("boom", exc_info=True)
    out = stream.getvalue()
    assert "ValueError: bad key [redacted]" in out
    assert "RuntimeError: while texting +1415****123" in out
    assert PHONE not in out and KEY not in out


def test_filter_keeps_a_record_with_a_broken_format_string(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning("to %s and %s", PHONE)  # one argument short
    out = stream.getvalue()
    assert out.startswith("WARNING oaksend.test.logs to ")
    assert PHONE not in out


def test_filter_masks_non_string_messages(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info({"to": PHONE, "key": KEY})
    out = stream.getvalue()
    assert PHONE not in out and KEY not in out and "+1415****123" in out


def test_filter_does_not_touch_records_without_secrets(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.debug("pass: dispatched %d in %d tasks at %s", 40, 2, "2026-03-01 12:00:00")
    assert stream.getvalue() == "DEBUG oaksend.test.logs pass: dispatched 40 in 2 tasks at 2026-03-01 12:00:00\n"


def test_install_redaction_filters_root_handlers_once() -> None:
    root = logging.getLogger()
    filters_before = {h: list(h.filters) for h in root.handlers}
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        install_redaction((KEY,))
        install_redaction((KEY,))
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        logging.getLogger("oaksend.test.root").warning("key %s to %s", KEY, PHONE)
        assert stream.getvalue().strip() == "key [redacted] to +1415****123"
    finally:
        root.removeHandler(handler)
        handler.close()
        for other, filters in filters_before.items():  # pytest's own capture handlers got the filter too
            other.filters[:] = filters


# -- URL passwords -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://app:s3cret@db/app", "postgresql://app:***@db/app"),
        ("postgresql+psycopg://app:s3cret@db:5432/app?sslmode=require", "postgresql+psycopg://app:***@db:5432/app?sslmode=require"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:p@ss@cache:6380/1", "rediss://default:***@cache:6380/1"),
        ("postgresql:///app?host=/run&password=s3cret&port=5", "postgresql:///app?host=/run&password=***&port=5"),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("connect to redis://:s3cret@h:1/0 failed; retry", "connect to redis://:***@h:1/0 failed; retry"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("sqlite:///oaksend.db", "sqlite:///oaksend.db"),
        ("https://usapi.hottask.com/chat", "https://usapi.hottask.com/chat"),
    ],
)
def test_mask_url(text: str, masked: str) -> None:
    from oaksend.worker.logs import mask_url

    assert mask_url(text) == masked
    assert redact(text) == masked


def test_log_lines_and_tracebacks_lose_store_passwords() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(("odd-secret-9z",)))
    logger = logging.getLogger("oaksend.test.urls")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("using %s and %s", "postgresql://app:CANARY1@db/app", "redis://:CANARY2@r:6379/0")
        try:
            raise RuntimeError("cannot reach postgresql://app:CANARY3@db/app (password odd-secret-9z)")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "app:***@db/app" in out and "RuntimeError" in out
    for canary in ("CANARY1", "CANARY2", "CANARY3", "odd-secret-9z"):
        assert canary not in out
