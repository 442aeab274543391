"""RFC 9457 problem details: every error of the API is `application/problem+json`.

Each kind of error has a stable `type` (`urn:oaksend:problem:<name>`, listed in
docs/api.md), a `title`, the HTTP `status`, a one-line `detail` and, for input
errors, the `field` at fault (`to`, `messages[3].chatbot`, ...).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from oaksend.errors import IdempotencyConflict, ValidationError

__all__ = ["PROBLEM_TYPES", "Problem", "from_validation", "problem_response"]

MEDIA_TYPE = "application/problem+json"
#: name -> (status, title)
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "invalid-number": (422, "The phone number is not valid"),
    "invalid-field": (422, "A field is not valid"),
    "invalid-json": (400, "The body is not a JSON document of the expected shape"),
    "unknown-chatbot": (404, "No such chatbot"),
    "suppressed": (422, "The number must not be texted (STOP or landline)"),
    "idempotency-conflict": (422, "The Idempotency-Key was used for another request"),
    "idempotency-in-progress": (409, "A request with this Idempotency-Key is still running"),
    "invalid-state": (409, "The message's state does not allow this action"),
    "not-found": (404, "Not found"),
    "unauthorized": (401, "A valid API key is needed"),
    "forbidden": (403, "This API key may not do that"),
    "rate-limited": (429, "Too many requests for this API key"),
    "too-large": (413, "The request body is too large"),
    "unavailable": (503, "A store (database or Redis) is unavailable"),
}
#: ValidationError fields of the library, as the API's JSON spells them.
_FIELD_NAMES = {"serial_number": "chatbot", "requests": "messages"}


class Problem(Exception):
    """An error answered as problem details."""

    def __init__(self, name: str, detail: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.name, self.detail, self.field, self.headers = name, detail, field, headers or {}

    def response(self) -> Response:
        return problem_response(self.name, self.detail, field=self.field, headers=self.headers)


def problem_response(name: str, detail: str, *, field: str | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    status, title = PROBLEM_TYPES[name]
    body: dict[str, Any] = {"type": f"urn:oaksend:problem:{name}", "title": title, "status": status,
                            "detail": detail}
    if field is not None:
        body["field"] = field
    return Response(json.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def api_field(field: str) -> str:
    """`requests[3].serial_number` -> `messages[3].chatbot`."""
    out = []
    for part in field.split("."):
        name, bracket, rest = part.partition("[")
        out.append(_FIELD_NAMES.get(name, name) + bracket + rest)
    return ".".join(out)


def from_validation(exc: ValidationError) -> Problem:
    """The library's refusal as a problem: the type from the field and the error's class."""
    field = api_field(exc.field)
    if isinstance(exc, IdempotencyConflict):
        name = "idempotency-conflict"
    elif field.split(".")[-1] == "to":
        # enqueue.refuse_suppressed's refusal names `to` and says "is suppressed" (tests/api pin it).
        name = "suppressed" if "is suppressed" in exc.message else "invalid-number"
    else:
        name = "invalid-field"
    return Problem(name, f"{field}: {exc.message}", field=field)
