"""The outbox: tables and the one repository that holds SQL."""

from models.db import make_engine
from models.repository import AttemptRecord, NewMessage, Outbox, Transition, Work
from models.tables import Attempt, Base, Chatbot, Message, OperatorAction, SuppressedNumber

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
