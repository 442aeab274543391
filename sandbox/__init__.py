"""A fake NewOaks SendTwilioMessage API: a real HTTP server with fault injection.

Run it with ``python -m oaksend.sandbox`` (or ``oaksend sandbox``), or in-process with
:func:`running_sandbox`. Names are imported lazily so that ``python -m oaksend.sandbox``
does not pay for httpx, which only :class:`SandboxControl` needs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Config",
    "SandboxControl",
    "SandboxServer",
    "SandboxThread",
    "load_config",
    "main",
    "running_sandbox",
]

_HOMES = {
    "Config": "oaksend.sandbox.config",
    "load_config": "oaksend.sandbox.config",
    "SandboxControl": "oaksend.sandbox.control",
    "SandboxServer": "oaksend.sandbox.server",
    "SandboxThread": "oaksend.sandbox.server",
    "main": "oaksend.sandbox.server",
    "running_sandbox": "oaksend.sandbox.server",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'oaksend.sandbox' has no attribute {name!r}")
