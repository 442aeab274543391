"""The outbox: tables and the one repository that holds SQL.

Names are imported lazily, so that the pure modules of this package (records,
fit) load without SQLAlchemy: ``from oaksend.models.records import NewMessage``
imports no database library.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "Attempt": "oaksend.models.tables",
    "AttemptRecord": "oaksend.models.records",
    "Base": "oaksend.models.tables",
    "Chatbot": "oaksend.models.tables",
    "Message": "oaksend.models.tables",
    "NewMessage": "oaksend.models.records",
    "OperatorAction": "oaksend.models.tables",
    "Outbox": "oaksend.models.repository",
    "SuppressedNumber": "oaksend.models.tables",
    "Transition": "oaksend.models.records",
    "Work": "oaksend.models.records",
    "make_engine": "oaksend.models.db",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home), name)
