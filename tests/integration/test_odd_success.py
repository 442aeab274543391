"""Every stated success reaches the API exactly once, whatever else its body holds.

The real sandbox serves each odd success shape (`success:<variant>` scripted per number)
to real dispatcher and worker processes; each message must end `sent` after one call, and
what was odd must be on its attempt row (`anomalies`), for `oaksend anomalies` to list.
"""

from __future__ import annotations

import time
from typing import Any

from oaksend.sandbox.faults import LOOSE_SUCCESS_VARIANTS, ODD_SUCCESS_VARIANTS
from tests.support import CHATBOT, wait_until

PHONES = {variant: f"+141555501{80 + i:02d}" for i, variant in enumerate(ODD_SUCCESS_VARIANTS)}
LOOSE_PHONES = {variant: f"+141555502{i:02d}" for i, variant in enumerate(LOOSE_SUCCESS_VARIANTS)}

#: One of Success, Code, Data.Status missing, null or empty, or another success word (issue 17):
#: what the attempt's anomalies must say, and whether the body still carries its SessionID.
LOOSE: dict[str, tuple[str, bool]] = {
    "no-data": ("Data missing: success stated by Success and Code", False),
    "data-null": ("Data null: success stated by Success and Code", False),
    "data-empty": ("Data empty: success stated by Success and Code", False),
    "no-status": ("Data.Status missing: success stated by Success and Code", True),
    "status-null": ("Data.Status null: success stated by Success and Code", True),
    "no-code": ("Code missing: success stated by Success and Data.Status", True),
    "code-zero": ("Code 0: success stated by Success and Data.Status", True),
    "no-success": ("Success missing: success stated by Code and Data.Status", True),
    "status-success": ('Data.Status "Success" read as success', True),
    "status-one": ('Data.Status "1" read as success', True),
    "status-ok": ('Data.Status "OK" read as success', True),
}


def _send_each(phones: dict[str, str], producer: Any, outbox: Any, sandbox: Any) -> dict[str, int]:
    for variant, phone in phones.items():
        # Were any of them resent, the next answers would be plain successes: count the calls.
        sandbox.script(phone, [f"success:{variant}", "ok", "ok"])
    ids = {variant: producer.send(CHATBOT, phone, f"reminder {variant}") for variant, phone in phones.items()}

    def all_terminal() -> bool:
        return all(outbox.get(mid).state in {"sent", "failed", "unknown", "expired"} for mid in ids.values())

    wait_until(all_terminal, 30, what="every message to end")
    time.sleep(1.0)  # a (wrong) retry backs off for at most 0.2 s in this stack: long enough to show it
    return ids


def test_each_odd_success_is_sent_once(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    make_stack()
    ids = _send_each(PHONES, producer, outbox, sandbox)
    for variant, mid in ids.items():
        m = outbox.get(mid)
        attempts = outbox.history(mid)[0]
        calls = sandbox.requests_to(PHONES[variant])
        assert [r["fault"] for r in calls] == [f"success:{variant}"], variant
        assert (m.state, m.attempts, m.ambiguous, len(attempts)) == ("sent", 1, 0, 1), variant
        [a] = attempts
        assert (a.http_status, a.success, a.classification) == (200, True, "sent"), variant
        issued = calls[0]["session_id"]
        if variant == "session-huge":
            assert (m.session_id, m.session_id_text, a.session_id_text) == (None, str(issued + 2**64), str(issued + 2**64))
        elif variant == "session-word":
            assert (m.session_id, m.session_id_text) == (None, f"sess-{issued}"), variant
        elif variant == "session-negative":
            assert m.session_id == a.session_id == -issued
        else:
            assert (m.session_id, m.session_id_text) == (issued, None), variant
        if variant != "status-spaced" and variant != "message-null":
            assert a.anomalies, variant  # what was odd is on the audit row


def test_a_success_with_a_field_missing_or_spelled_otherwise_is_sent_once(
    make_stack: Any, producer: Any, outbox: Any, sandbox: Any
) -> None:
    assert set(LOOSE) == set(LOOSE_SUCCESS_VARIANTS)
    make_stack()
    ids = _send_each(LOOSE_PHONES, producer, outbox, sandbox)
    for variant, mid in ids.items():
        note, has_session = LOOSE[variant]
        m = outbox.get(mid)
        attempts = outbox.history(mid)[0]
        calls = sandbox.requests_to(LOOSE_PHONES[variant])
        # Exactly one request: the stated success was not resent.
        assert [r["fault"] for r in calls] == [f"success:{variant}"], variant
        assert (m.state, m.attempts, m.ambiguous, len(attempts)) == ("sent", 1, 0, 1), variant
        [a] = attempts
        assert (a.http_status, a.classification, a.reason) == (200, "sent", "ok" if has_session else "ok_no_session_id")
        assert a.success is (None if variant == "no-success" else True), variant
        issued = calls[0]["session_id"]
        assert m.session_id == (issued if has_session else None), variant
        # The oddity is named on the attempt, after what the parser noted.
        assert a.anomalies is not None and note in a.anomalies, (variant, a.anomalies)
        assert a.anomalies.endswith(note), (variant, a.anomalies)
