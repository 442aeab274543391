"""The one place that holds SQL: every read and write of the outbox goes through `Outbox`.

State changes are conditional UPDATEs (on state and lease token), so two
processes never both win the same message, whatever the database. The
repository is split by who uses it; `Outbox` is all of it.
"""

from __future__ import annotations

from oaksend.models.records import INDEFINITE, AttemptRecord, NewMessage, Transition, Work
from oaksend.models.repository.api import ApiRepository
from oaksend.models.repository.campaigns import CampaignRepository
from oaksend.models.repository.caps import CapRepository
from oaksend.models.repository.dispatch import DispatchRepository
from oaksend.models.repository.enqueue import EnqueueRepository
from oaksend.models.repository.operator import OperatorRepository
from oaksend.models.repository.ops import OpsRepository
from oaksend.models.repository.send import SendRepository
from oaksend.models.repository.web import WebRepository


class Outbox(EnqueueRepository, DispatchRepository, SendRepository, OperatorRepository, CampaignRepository,
             OpsRepository, CapRepository, ApiRepository, WebRepository):
    """The outbox repository, handed its engine: `Outbox(make_engine(url))`."""


__all__ = ["INDEFINITE", "AttemptRecord", "NewMessage", "Outbox", "Transition", "Work"]
