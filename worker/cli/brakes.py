"""Brakes and the audit around operator commands.

- The audit's intent first: `audited(...)` writes (and commits) a row, state 'started',
  before the command acts, and completes it after ('done' or 'failed', with counts).
  A command killed midway leaves its intent, still 'started', with the count reached.
- Brakes that match the harm (`brake`, pure): a retry of `unknown` messages (their SMS
  may already have gone out), a campaign cancel (it cannot be undone) and any action on
  more than CONFIRM_ABOVE messages ask first: `--yes`, or "y" at a terminal; without a
  terminal and without `--yes` the command refuses with one line.
- A dry run reports what the action's own statements would change: the callers rehearse
  the action (`OperatorRepository.rehearsal`: run, count, roll back).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from oaksend.errors import InvalidTransition, NotFound, ValidationError
from oaksend.worker.cli.common import EXIT_PARTIAL
from oaksend.worker.cli.render import iso, print_json, table

__all__ = ["CONFIRM_ABOVE", "SAMPLE", "Audit", "audited", "brake", "confirm", "print_preview", "refused_of",
           "sample_rows", "selection_of", "stop_unless_confirmed"]

#: Above this many messages, an action needs `--yes` (or a "y" at the prompt).
CONFIRM_ABOVE = 20
#: Messages shown by a dry run.
SAMPLE = 10


# -- the decision: pure ------------------------------------------------------------------------------
def brake(count: int, *, unknown: int = 0, always: str | None = None) -> str | None:
    """Why an action on `count` messages needs confirming (None: it does not).

    `unknown`: how many of them are `unknown` messages a retry would send again; `always`:
    a harm of the action itself (a campaign cancel), whatever the count.
    """
    if always:
        return always
    if unknown:
        return f"{unknown} of them unknown: their SMS may already have gone out, a retry can send it twice"
    if count > CONFIRM_ABOVE:
        return f"more than {CONFIRM_ABOVE} messages at once"
    return None


# -- asking ------------------------------------------------------------------------------------------
def confirm(args: argparse.Namespace, verb: str, count: int, *, why: str | None = None,
            action: str | None = None) -> bool:
    """True to go on: no brake applies, `--yes`, or "y" typed at a terminal.

    `why` defaults to the count's brake; `action` (e.g. "cancel 150 messages") is what is asked.
    No terminal and no `--yes` is a one-line error (ValidationError on `yes`).
    """
    why = why if why is not None else brake(count)
    if why is None or getattr(args, "yes", False):
        return True
    action = action or f"{verb} {count} messages"
    if not sys.stdin.isatty():
        raise ValidationError("yes", f"{action}: {why}; pass --yes to confirm, or --dry-run to see what would "
                                     f"change first")
    print(f"oaksend: {why}", file=sys.stderr)
    print(f"{action}? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def stop_unless_confirmed(args: argparse.Namespace, verb: str, count: int, *, why: str | None = None,
                          action: str | None = None) -> int | None:
    """`confirm`, as an exit code to stop with (the operator said no) or None to go on."""
    if confirm(args, verb, count, why=why, action=action):
        return None
    print(f"oaksend: {verb}: not confirmed; nothing was changed", file=sys.stderr)
    return EXIT_PARTIAL


# -- dry runs ----------------------------------------------------------------------------------------
def sample_rows(outbox: Any, ids: list[int]) -> list[dict[str, Any]]:
    """The first SAMPLE messages of `ids` as they are now (numbers masked)."""
    from oaksend.worker.logs import mask_phone

    rows = []
    for mid in ids[:SAMPLE]:
        m = outbox.get(mid)
        if m is None:
            rows.append({"id": mid, "state": "not found", "chatbot": None, "to": None, "created_at": None})
        else:
            rows.append({"id": m.id, "state": m.state, "chatbot": m.serial_number,
                         "to": mask_phone(m.to_phone) if m.to_phone else "", "created_at": iso(m.created_at)})
    return rows


def print_preview(args: argparse.Namespace, verb: str, count: int, sample: list[dict[str, Any]], *,
                  selected: int | None = None, refused: dict[str, int] | None = None,
                  extra: dict[str, Any] | None = None) -> None:
    """What a dry run found: `count` messages would change (of `selected`), and why the others would not
    (`extra`: what else would change, in the JSON)."""
    if getattr(args, "json", False):
        data: dict[str, Any] = {"dry_run": True, "command": verb, "count": count, "sample": sample, **(extra or {})}
        if selected is not None:
            data.update(selected=selected, refused=refused or {})
        print_json(data)
        return
    of = f" of {selected} selected" if selected is not None else ""
    print(f"{verb} --dry-run: {count}{of} messages would be affected; nothing was changed")
    for why, n in sorted((refused or {}).items()):
        print(f"  {n} not: {why}")
    if sample:
        table(sample, ["id", "state", "chatbot", "to", "created_at"])


def refused_of(results: dict[int, str], done: str) -> dict[str, int]:
    """Why the messages that would not (or did not) change were left: reason -> messages."""
    out: dict[str, int] = {}
    for result in results.values():
        if result != done:
            out[result] = out.get(result, 0) + 1
    return out


def selection_of(args: argparse.Namespace) -> dict[str, Any]:
    """The selection as the operator gave it, for the audit."""
    if getattr(args, "ids", None):
        return {"ids": list(args.ids)}
    out: dict[str, Any] = {}
    for name in ("state", "chatbot", "since", "until", "deadline"):
        value = getattr(args, name, None)
        if value:
            out[name] = value
    return out


# -- the audit: intent first -------------------------------------------------------------------------
class Audit:
    """The intent row of one running command: it sets `count` and `result` as it goes."""

    def __init__(self, outbox: Any, audit_id: int, result: dict[str, Any] | None) -> None:
        self.outbox, self.id = outbox, audit_id
        self.count = 0
        self.result: dict[str, Any] = dict(result or {})

    def progress(self, count: int) -> None:
        """Record the messages changed so far (what an interrupted command leaves behind)."""
        self.count = count
        self.outbox.progress_audit(self.id, count)


@contextmanager
def audited(outbox: Any, args: argparse.Namespace, command: str, selection: dict[str, Any], *,
            result: dict[str, Any] | None = None, note: str | None = None) -> Iterator[Audit]:
    """Write the command's intent (committed) before the block acts; complete it after.

    `selection` names what was chosen (ids, filters, a campaign or chatbot), never a number or
    a text; free text goes in `note` (default `--note`), which retention clears.

    An exception marks it 'failed' with the error's type (and, for an unknown id or a state that
    does not allow the action, its message); if even that write fails, the intent stays 'started'.
    """
    from oaksend.worker.clock import utcnow

    note = note if note is not None else getattr(args, "note", None)  # free text: retention clears it
    audit = Audit(outbox, outbox.begin_audit(command, selection, args.actor, utcnow(), note, result), result)
    try:
        yield audit
    except BaseException as exc:
        error: dict[str, Any] = {"error": type(exc).__name__}
        if isinstance(exc, NotFound | InvalidTransition):  # ids and states only: never a number or a text
            error["detail"] = str(exc)[:300]
        with suppress(Exception):  # the database is away: the intent stays 'started'
            outbox.finish_audit(audit.id, "failed", audit.count, {**audit.result, **error}, utcnow())
        raise
    outbox.finish_audit(audit.id, "done", audit.count, audit.result or None, utcnow())
