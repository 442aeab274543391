"""A small client of the sandbox's ``/_sandbox/*`` control endpoints, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import httpx

from oaksend.sandbox.config import DEFAULT_API_KEY


class SandboxControl:
    """Reads records and stats of a running sandbox, scripts it and changes its faults."""

    def __init__(self, base_url: str, api_key: str = DEFAULT_API_KEY, timeout_s: float = 10.0) -> None:
        """``api_key``: the key the sandbox was started with (its control endpoints require it)."""
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/_sandbox", timeout=timeout_s,
                                    headers={"X-Sandbox-Key": api_key})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Records with a sequence number above ``since``."""
        return self._call("GET", "/requests", params={"since": since})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        """Forgets records, stats and scripts (the configuration stays)."""
        self._call("POST", "/reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Changes settings by name (``p_503=0.2``, ``limits={"SN": "5:1"}``); returns the new config."""
        return self._call("POST", "/config", json=changes)

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/config")

    def script(self, responses: list[str], *, to_phone: str | None = None, serial: str | None = None) -> int:
        """Queues outcomes for the next requests to ``to_phone`` (or of chatbot ``serial``)."""
        if (to_phone is None) == (serial is None):
            raise ValueError("give exactly one of to_phone and serial")
        key = {"ToPhoneNumber": to_phone} if to_phone is not None else {"SerialNumber": serial}
        return self._call("POST", "/script", json={**key, "responses": responses})["queued"]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
