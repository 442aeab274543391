"""What a campaign would write, counted: recipients, messages, skipped by cause, zones fallen back.

`Previews` is a part of the `Campaigns` service (oaksend.worker.campaigns.service),
kept apart so that each file reads as one concern. `preview_counts` reads the whole
audience as `create` would (every bad row refused, every skip counted) and writes
nothing: `oaksend campaign preview` prints it beside the first messages, so an
empty preview says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from oaksend.worker.campaigns.audience import AudienceError, RowError, from_dicts
from oaksend.worker.campaigns.plan import FALLBACK, CampaignPlan, summary, why_empty
from oaksend.worker.campaigns.schedule import Cron
from oaksend.worker.campaigns.spec import BAD_ROWS, CRON_HORIZON, CampaignSpec
from oaksend.worker.message.segments import count_segments, encoding

__all__ = ["Previews", "report"]


class Previews:
    """preview_counts of the Campaigns service."""

    clock: Callable[[], datetime]
    _plan: Callable[..., CampaignPlan]
    _recipients: Callable[..., Any]

    def preview_counts(self, spec: CampaignSpec, audience: Any) -> dict[str, Any]:
        """What `create` would write for this audience, counted; writes nothing. Raises AudienceError
        (every bad row) as create does."""
        header, rows = from_dicts(audience) if isinstance(audience, list) else audience
        plan = self._plan(spec, header)
        now = self.clock()
        window = (now - timedelta(seconds=1), now + CRON_HORIZON) if isinstance(spec.schedule, Cron) else None
        errors: list[RowError] = []
        counts: Counter[str] = Counter()
        recipients = messages = 0
        segments: Counter[str] = Counter()
        for recipient, planned in self._recipients(rows, spec.audience, plan, now, errors, counts, window):
            recipients += 1
            messages += len(planned)
            for p in planned:
                n = count_segments(p.body)
                segments["total"] += n
                segments["ucs2"] += encoding(p.body) == "UCS-2"
                segments["longest"] = max(segments["longest"], n)
            fallback = plan.zones_of(recipient).fallback
            if fallback:
                counts[FALLBACK + fallback] += 1
        if errors:
            raise AudienceError(errors, counts[BAD_ROWS])
        return report(recipients, messages, counts, tz=plan.tz.key,
                      segments={"total": segments["total"], "ucs2_messages": segments["ucs2"],
                                "longest": segments["longest"]})


def report(recipients: int, messages: int, counts: Counter[str] | dict[str, int], **extra: Any) -> dict[str, Any]:
    """The counts `create`, `preview` and `show` print: skipped messages and recipients in the
    campaign's zone, by cause, and why nothing would be written when nothing would."""
    skipped, fallback = summary(counts)
    out: dict[str, Any] = {**extra, "recipients": recipients, "messages": messages, "skipped": skipped,
                           "campaign_zone": fallback}
    if not messages:
        out["why_empty"] = why_empty(skipped, recipients)
    return out
