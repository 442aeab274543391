"""The checks of `python -m bench.recovery`: each message of the stream as the database and the API saw it
(Audit), the rules every one must keep (audit_problems, pure), and the stream's own enqueue -> sent as the
reference for the recovery figures."""

from __future__ import annotations

from dataclasses import dataclass

from bench.harness import Check
from bench.harness.stack import Stack


@dataclass
class Audit:
    """One message, as the database and the API saw it."""

    state: str
    attempts: int
    stand_ins: int  #: `worker_lost` attempts (the rescue's ambiguous stand-in)
    sent_attempts: int
    numbers_ok: bool  #: attempt numbers are 1..n
    requests: int  #: requests the API received for its number


def audit_problems(audits: dict[int, Audit], policy: str) -> dict[str, list[int]]:
    """Pure: the messages breaking each rule (empty lists when all hold)."""
    allowed = {"sent"} if policy == "retry" else {"sent", "unknown"}
    problems: dict[str, list[int]] = {"not ended as the policy says": [], "attempts differ from the API's requests": [],
                                      "requested twice without a stand-in": [], "two sent attempts": [],
                                      "attempt numbers not 1..n": []}
    for mid, a in audits.items():
        if a.state not in allowed or (a.state == "unknown" and not a.stand_ins):
            problems["not ended as the policy says"].append(mid)
        if not (a.attempts - a.stand_ins <= a.requests <= a.attempts):
            problems["attempts differ from the API's requests"].append(mid)
        if a.requests > 1 and not a.stand_ins:
            problems["requested twice without a stand-in"].append(mid)
        if a.sent_attempts > 1:
            problems["two sent attempts"].append(mid)
        if not a.numbers_ok:
            problems["attempt numbers not 1..n"].append(mid)
    return problems


def stream_latency_s(stack: Stack, ids: list[int], held: set[int]) -> list[float]:
    """Enqueue -> sent (seconds, ascending) of the stream's messages not in flight at a kill: the reference."""
    from sqlalchemy import select

    from oaksend.models.tables import Message

    with stack.reader.connect() as conn:
        rows = conn.execute(select(Message.id, Message.created_at, Message.sent_at)
                            .where(Message.id.between(min(ids), max(ids)), Message.state == "sent",
                                   Message.attempts == 1, Message.lost == 0))
        return sorted((sent - created).total_seconds() for mid, created, sent in rows
                      if mid not in held and sent is not None)


# -- the checks -------------------------------------------------------------------------------
def audits(stack: Stack, ids: list[int]) -> dict[int, Audit]:
    from sqlalchemy import case, func, select

    from oaksend.models.tables import Attempt, Message

    lo, hi = min(ids), max(ids)
    requests: dict[str, int] = {}
    for record in stack.control.requests():
        number = record.get("to_phone_number")
        requests[number] = requests.get(number, 0) + 1
    with stack.reader.connect() as conn:
        per = {mid: (n, lost, sent, top) for mid, n, lost, sent, top in conn.execute(
            select(Attempt.message_id, func.count(), func.sum(case((Attempt.reason == "worker_lost", 1), else_=0)),
                   func.sum(case((Attempt.classification == "sent", 1), else_=0)), func.max(Attempt.number))
            .where(Attempt.message_id.between(lo, hi)).group_by(Attempt.message_id))}
        rows = list(conn.execute(select(Message.id, Message.state, Message.to_phone).where(Message.id.between(lo, hi))))
    wanted = set(ids)
    out = {}
    for mid, state, to in rows:
        if mid not in wanted:
            continue
        n, lost, sent, top = per.get(mid, (0, 0, 0, 0))
        out[mid] = Audit(state=state, attempts=n, stand_ins=int(lost or 0), sent_attempts=int(sent or 0),
                         numbers_ok=(top or 0) == n, requests=requests.get(to, 0))
    # Every message of the stream is there (one number each).
    missing = wanted - set(out)
    for mid in missing:
        out[mid] = Audit(state="missing", attempts=0, stand_ins=0, sent_attempts=0, numbers_ok=True, requests=0)
    return out


def check(stack: Stack, ids: list[int], policy: str, checks: list[Check]) -> None:
    found = audits(stack, ids)
    states: dict[str, int] = {}
    for a in found.values():
        states[a.state] = states.get(a.state, 0) + 1
    for rule, bad in audit_problems(found, policy).items():
        checks.append((f"no message: {rule}", not bad, f"{len(bad)} of {len(found):,} (first ids {bad[:5]}); "
                       f"states {states}"))
    twice = sum(1 for a in found.values() if a.requests > 1)
    stand_ins = sum(a.stand_ins for a in found.values())
    total = stack.control.stats().get("total", 0)
    checks.append(("the API saw only the stream's requests", total == sum(a.requests for a in found.values()),
                   f"sandbox total {total:,}; {stand_ins} worker_lost stand-ins, {twice} numbers requested twice"))
