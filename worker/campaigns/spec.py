"""What a campaign is asked to be (`CampaignSpec`), what an action did (`Result`), and their shared constants.

Kept apart from the service (oaksend.worker.campaigns.service) so that its parts, creating
and syncing, share them without importing each other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.schedule import Cron, Once, Relative, Schedule

#: How far ahead the scheduler materializes cron occurrences.
CRON_HORIZON = timedelta(hours=6)
#: The bad-row count's key in a skip Counter (no cause can be named so); removed before counts are shown.
BAD_ROWS = "\x00bad rows"
#: Open states a campaign can be paused, resumed or cancelled from.
LIVE = ("draft", "scheduled", "running")
#: States whose messages are held (written, never dispatched): until `start` or `resume`.
HELD = ("draft", "paused")
#: States whose audience may change (a finished relative campaign takes new bookings and runs again).
CHANGEABLE = (*LIVE, "paused", "finished")


@dataclass(frozen=True)
class CampaignSpec:
    """What `oaksend campaign create` (or application code) asks for; checked by `Campaigns.create`."""

    name: str
    chatbot: str
    template: str
    schedule: Schedule
    #: The campaign's IANA zone; None: OAKSEND_CAMPAIGN_TIMEZONE, else a ValidationError (never a silent UTC).
    tz: str | None = None
    audience: AudienceSpec = field(default_factory=AudienceSpec)
    quiet_hours: str | None = "21:00-08:00"
    deadline: str | None = None
    rate_cap_per_s: float | None = None
    missed: str = "send"
    frequency_cap: int | None = None
    #: Write everything, but hold it until `Campaigns.start` (state "draft").
    draft: bool = False
    #: Create it even when it would write no message (a relative or once campaign; cron may start empty).
    allow_empty: bool = False
    #: Skip (and count) a recipient whose text would take more SMS segments than this.
    max_segments: int | None = None


@dataclass
class Result:
    """What a create / update / tick did."""

    id: int = 0
    recipients: int = 0
    messages: int = 0
    cancelled: int = 0
    moved: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: Messages written that are certain to expire: even alone on the chatbot, at its limit (or the
    #: campaign's rate cap), they cannot go out before their deadlines (create warns).
    expiring: int = 0


def schedule_json(schedule: Schedule) -> tuple[str, dict[str, Any]]:
    if isinstance(schedule, Once):
        return "once", {"at": schedule.at.isoformat()}
    if isinstance(schedule, Relative):
        return "relative", {"column": schedule.column, "offsets_s": [o.total_seconds() for o in schedule.offsets]}
    return "cron", {"cron": schedule.expr}


def schedule_from_json(kind: str, data: dict[str, Any]) -> Schedule:
    if kind == "once":
        return Once(datetime.fromisoformat(data["at"]))
    if kind == "relative":
        return Relative(data["column"], tuple(timedelta(seconds=s) for s in data["offsets_s"]))
    return Cron(data["cron"])


def needed_columns(spec_schedule: Schedule, template_names: tuple[str, ...]) -> list[str]:
    from oaksend.worker.campaigns.template import BUILTINS

    needed = [n for n in template_names if n not in BUILTINS]
    if isinstance(spec_schedule, Relative):
        needed.append(spec_schedule.column)
    return needed


__all__ = ["CHANGEABLE", "CRON_HORIZON", "HELD", "LIVE", "CampaignSpec", "Result", "needed_columns",
           "schedule_from_json", "schedule_json"]
