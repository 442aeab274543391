"""The webhook deliveries' HTTP calls: the one place of this package that imports httpx.

A call is a value in, a value out: (HTTP status or None, a one-line error or None).
Every transport error is translated here; none leaks to the delivery loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

__all__ = ["WebhookClient"]

#: Characters of a receiver's error kept on the delivery (its body is not kept).
_ERROR_CHARS = 300


class WebhookClient:
    """POSTs of signed events. Thread-safe (httpx.Client is); `close()` it."""

    def __init__(self, timeout_s: float, max_connections: int = 32) -> None:
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False,
                                    limits=httpx.Limits(max_connections=max_connections),
                                    headers={"user-agent": "oaksend-webhooks"})

    def post(self, url: str, body: bytes, headers: Sequence[tuple[str, str]]) -> tuple[int | None, str | None]:
        """(status, error): a status for any answer (the caller judges it), else why there was none."""
        try:
            response = self._client.post(url, content=body, headers=[("content-type", "application/json"),
                                                                      *headers])
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        return response.status_code, None if response.is_success else f"HTTP {response.status_code}"

    def close(self) -> None:
        self._client.close()
