"""Every plainly stated success reaches the API exactly once, whatever else its body holds.

The real sandbox serves each odd success shape (`success:<variant>` scripted per number)
to real dispatcher and worker processes; each message must end `sent` after one call.
"""

from __future__ import annotations

import time
from typing import Any

from oaksend.sandbox.faults import ODD_SUCCESS_VARIANTS
from tests.support import CHATBOT, wait_until

PHONES = {variant: f"+141555501{80 + i:02d}" for i, variant in enumerate(ODD_SUCCESS_VARIANTS)}


def test_each_odd_success_is_sent_once(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    make_stack()
    for variant, phone in PHONES.items():
        # Were any of them resent, the next answers would be plain successes: count the calls.
        sandbox.script(phone, [f"success:{variant}", "ok", "ok"])
    ids = {variant: producer.send(CHATBOT, phone, f"reminder {variant}") for variant, phone in PHONES.items()}

    def all_terminal() -> bool:
        return all(outbox.get(mid).state in {"sent", "failed", "unknown", "expired"} for mid in ids.values())

    wait_until(all_terminal, 30, what="every message to end")
    time.sleep(1.0)  # a (wrong) retry backs off for at most 0.2 s in this stack: long enough to show it
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
