"""Bad input, fuzzed: at the enqueue API and at `oaksend send`, every input is either stored
exactly or refused with a typed one-line error, and a refusal writes nothing.

SQL injection strings are among the inputs: they must come back byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from oaksend.models.keyhash import stored_key
from oaksend.models.tables import Message
from oaksend.errors import ValidationError

VALID_PHONES = ["+14155550123", "+442071838750", "+61291234567", "+6834002", "+8613800138000"]
INJECTIONS = ["'; DROP TABLE messages; --", "\" OR 1=1 --", "%s%s%s", "{0}{1}", "\\x00", "$$; SELECT 1; $$"]
SERIALS = ["3254a9d0424c4806b9ea3d0763a1b2c3", "white-label_bot-01"]

texts = st.one_of(st.text(max_size=40), st.sampled_from(INJECTIONS), st.text(min_size=1595, max_size=1605),
                  st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30))
phones = st.one_of(st.sampled_from(VALID_PHONES), st.text(max_size=20), st.from_regex(r"\+[0-9]{5,16}", fullmatch=True))
serials = st.one_of(st.sampled_from(SERIALS), st.text(max_size=70), st.sampled_from(INJECTIONS))
keys = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(INJECTIONS))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.text(max_size=10)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)
metadatas = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), json_values, max_size=4),
                      st.just({1: "int key"}), st.just({"nan": float("nan")}), st.just([1, 2]))
offsets = st.one_of(st.none(), st.integers(-3 * 86400, 400 * 86400))

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _count(outbox: Any) -> int:
    with outbox.session() as s:
        return s.scalar(select(func.count()).select_from(Message)) or 0


def _at(offset_s: int | None) -> datetime | None:
    return None if offset_s is None else datetime.now(timezone.utc) + timedelta(seconds=offset_s)


@FUZZ
@given(serial=serials, to=phones, text=texts, key=keys, meta=metadatas, send_at=offsets, deadline=offsets)
def test_enqueue_stores_exactly_or_refuses(producer: Any, outbox: Any, serial: str, to: str, text: str,
                                           key: str | None, meta: Any, send_at: int | None,
                                           deadline: int | None) -> None:
    before = _count(outbox)
    try:
        mid = producer.send(serial, to, text, idempotency_key=key, send_at=_at(send_at), deadline=_at(deadline),
                            metadata=meta)
    except ValidationError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{exc.field}: ")
        assert _count(outbox) == before  # nothing half-written
        return
    row = outbox.get(mid)
    assert (row.serial_number, row.to_phone, row.body, row.idempotency_key, row.meta) == (
        serial, to, text, stored_key(key, None), meta)
    assert row.state == "pending"


@FUZZ
@given(serial=serials, to=phones, text=texts.filter(lambda t: "\x00" not in t), key=keys)
def test_cli_send_stores_exactly_or_refuses(database_url: str, redis_url: str, outbox: Any, monkeypatch: Any,
                                            serial: str, to: str, text: str, key: str | None) -> None:
    from oaksend.worker.cli import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    args = ["send", "--chatbot", serial, "--to", to, "--text", text, "--json"]
    if key is not None:
        args += ["--key", key]
    before = _count(outbox)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse refusing an argument that looks like an option
            code = int(exc.code or 0)
    if code == 0:
        row = outbox.get(json.loads(out.getvalue())["id"])
        assert (row.serial_number, row.to_phone, row.body, row.idempotency_key) == (serial, to, text,
                                                                                    stored_key(key, None))
        return
    assert code == 2, (code, err.getvalue())
    assert err.getvalue().count("\n") == 1 or err.getvalue().startswith("usage:")
    assert _count(outbox) == before
