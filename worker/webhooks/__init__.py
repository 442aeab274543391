"""Status webhooks: signed POSTs of outcome events, from the event outbox, with retries.

`oaksend webhooks` runs `deliver.run`; `signing` holds the pure parts (signatures,
secrets, the retry schedule); `client` is the one place that makes the HTTP calls.
"""

from __future__ import annotations

__all__: list[str] = []
