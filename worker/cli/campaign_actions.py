"""`oaksend campaign start|pause|resume|cancel`: rehearsed, braked, audited before they act.

- `--dry-run` runs the action's own statements on a transaction that is rolled back
  and reports how many unsent messages it would hold, release or cancel.
- A cancel always asks (it cannot be undone); a start or resume that releases more than
  CONFIRM_ABOVE messages asks too. A pause never does: it sends nothing, `resume` undoes
  it, and an emergency stop must not wait for a prompt.
- The intent is written to the audit before the action, and completed with its count.
"""

from __future__ import annotations

import argparse
from typing import Any

from oaksend.worker.cli.brakes import CONFIRM_ABOVE, audited, brake, print_preview, stop_unless_confirmed
from oaksend.worker.cli.common import EXIT_OK

__all__ = ["DONE", "add_action_options", "run_action"]

#: What each action does to the campaign's unsent messages.
DONE = {"start": "released", "pause": "held", "resume": "released", "cancel": "cancelled"}
#: The harm of an action itself, whatever its count: it always asks.
HARMS = {"cancel": "a cancelled campaign cannot be resumed; its unsent messages are cancelled for good"}
#: The actions that may ask (above CONFIRM_ABOVE messages, or for their harm).
BRAKED = ("start", "resume", "cancel")


def run_action(args: argparse.Namespace, service: Any, verb: str) -> tuple[int | None, int]:
    """(an exit code to stop with, or None when it acted; the messages held / released / cancelled)."""
    from oaksend.worker.campaigns.service import Campaigns

    done = DONE[verb]
    if args.dry_run or (verb in BRAKED and not args.yes):
        with service.outbox.rehearsal() as box:  # the action's own statements, rolled back
            n = getattr(Campaigns(service.settings, outbox=box, redis_client=service.redis), verb)(args.id)
        if args.dry_run:
            print_preview(args, f"campaign {verb} {args.id}", n, [])
            return EXIT_OK, n
        stop = stop_unless_confirmed(args, f"campaign {verb}", n, why=brake(n, always=HARMS.get(verb)),
                                     action=f"{verb} campaign {args.id} ({n} unsent messages {done})")
        if stop is not None:
            return stop, 0
    with audited(service.outbox, args, f"campaign {verb}", {"campaign": args.id}) as audit:
        n = getattr(service, verb)(args.id)
        audit.count = n
        audit.result[done] = n
    return None, n


def add_action_options(p: argparse.ArgumentParser, verb: str) -> None:
    """`--dry-run`, `--yes` (for the actions that ask) and `--actor`."""
    p.add_argument("--dry-run", action="store_true",
                   help=f"print how many unsent messages would be {DONE[verb]}; change nothing")
    if verb in BRAKED:
        p.add_argument("--yes", action="store_true",
                       help="confirm without a prompt" if verb == "cancel"
                       else f"confirm more than {CONFIRM_ABOVE} messages without a prompt")
    p.add_argument("--actor", default=None,
                   help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
