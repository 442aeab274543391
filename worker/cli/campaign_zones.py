"""`oaksend campaign create / preview / show`: which zone a campaign is in, and what it would write, counted.

There is no silent default zone: `--tz`, else OAKSEND_CAMPAIGN_TIMEZONE, else a
one-line error; the zone used and where it came from are printed. `--at` needs a
time, not only a date. The counts (recipients, messages, skipped by cause,
recipients whose quiet hours fell back to the campaign's zone, by cause) are printed
by create (on stderr: stdout stays the id), preview and show.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, TextIO

from oaksend.errors import ValidationError
from oaksend.worker.cli.common import settings_of

__all__ = ["TZ_HELP", "campaign_zone", "check_at", "print_counts", "stored_counts"]

TZ_HELP = ("the campaign's IANA time zone, e.g. America/New_York (default: OAKSEND_CAMPAIGN_TIMEZONE; "
           "one of the two is required)")
_DATE_ONLY = re.compile(r"\s*\d{4}-\d{2}-\d{2}\s*")


def campaign_zone(args: argparse.Namespace) -> str:
    """--tz, else the OAKSEND_CAMPAIGN_TIMEZONE setting (noted in args.tz_source), else a ValidationError."""
    if args.tz:
        args.tz_source = "--tz"
        return str(args.tz)
    configured = settings_of(args).campaign_timezone
    if configured and configured.strip():
        from oaksend.worker.campaigns.schedule import zone

        args.tz_source = "OAKSEND_CAMPAIGN_TIMEZONE"
        return zone(configured.strip(), "OAKSEND_CAMPAIGN_TIMEZONE").key
    raise ValidationError("tz", "is required: give --tz ZONE (e.g. America/New_York) or set OAKSEND_CAMPAIGN_TIMEZONE")


def check_at(at: str | None) -> None:
    """A once campaign's --at is a local date AND time: a bare date would silently mean midnight."""
    if at is not None and _DATE_ONLY.fullmatch(at):
        raise ValidationError("at", f"{at.strip()!r} is a date without a time; give the local time too "
                                    f"(e.g. {at.strip()}T09:00)")


def stored_counts(data: dict[str, Any]) -> dict[str, Any]:
    """The counts of a stored campaign (`Campaigns.show`'s data)."""
    from oaksend.worker.campaigns.previews import report

    return report(data["recipients"], sum(data["messages"].values()), data["skipped"], tz=data["tz"])


def print_counts(counts: dict[str, Any], source: str | None = None, file: TextIO | None = None) -> None:
    """What a campaign writes (would write), in a few lines."""
    out = file or sys.stdout
    where = f" ({source})" if source else ""
    print(f"zone: {counts['tz']}{where}; {counts['recipients']} recipient(s), {counts['messages']} message(s)",
          file=out)
    if counts["skipped"]:
        print("skipped: " + _by_cause(counts["skipped"]), file=out)
    if counts["campaign_zone"]:
        print(f"quiet hours in the campaign's zone ({counts['tz']}): {sum(counts['campaign_zone'].values())} "
              f"recipient(s): " + _by_cause(counts["campaign_zone"]), file=out)
    seg = counts.get("segments")
    if seg and counts["messages"]:
        print(f"segments: {seg['total']} in all, {seg['total'] / counts['messages']:.1f} a message; longest "
              f"{seg['longest']}; {seg['ucs2_messages']} message(s) in UCS-2 (70 characters a segment: an emoji, a "
              f"curly quote or a letter outside GSM-7 does that)", file=out)
    if counts.get("why_empty"):
        print(f"no messages: {counts['why_empty']}", file=out)


def _by_cause(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {cause.replace('_', ' ')}" for cause, n in counts.items())
