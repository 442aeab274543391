"""Campaigns: an audience and a schedule become outbox messages, each exactly once.

    from oaksend.worker.campaigns import Campaigns, CampaignSpec

The names are imported lazily, so the pure modules of this package (schedule,
plan, template, audience) load without the database libraries.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["CampaignSpec", "Campaigns"]

_HOMES = {"Campaigns": "oaksend.worker.campaigns.service", "CampaignSpec": "oaksend.worker.campaigns.spec"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home), name)
