"""The HTTP API (`/v1`): producers in any language send and read messages, and manage
status webhooks. `create_api(settings)` is the ASGI app the dashboard mounts (docs/api.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_api"]


def create_api(settings: Any) -> Any:
    """The API's FastAPI app (imported on first use: FastAPI loads only when the API is served)."""
    from oaksend.web.api.app import create_api as build

    return build(settings)
