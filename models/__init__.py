"""The outbox: tables and the one repository that holds SQL."""

from oaksend.models.db import make_engine
from oaksend.models.records import AttemptRecord, NewMessage, Transition, Work
from oaksend.models.repository import Outbox
from oaksend.models.tables import Attempt, Base, Chatbot, Message, OperatorAction, SuppressedNumber

__all__ = [
    "Attempt",
    "AttemptRecord",
    "Base",
    "Chatbot",
    "Message",
    "NewMessage",
    "OperatorAction",
    "Outbox",
    "SuppressedNumber",
    "Transition",
    "Work",
    "make_engine",
]
