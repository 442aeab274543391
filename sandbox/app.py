"""The fake API's behaviour: routing, state and the control endpoints, without I/O.

:meth:`SandboxApp.handle` turns one parsed request into an :class:`Action`
(an answer, a delay, or "hang"/"reset"); the server applies it to the
connection. Time is passed in, so the whole behaviour can be driven
without sockets.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from oaksend.sandbox.config import Config, normalize_name
from oaksend.sandbox.exceptions import ConfigError
from oaksend.sandbox.faults import SCRIPT_KEYS, Outcome, Scripts, decide, resolve
from oaksend.sandbox.http11 import Request
from oaksend.sandbox.limits import Limiter
from oaksend.sandbox.records import Record, Recorder
from oaksend.sandbox.responses import Response, error, for_outcome, json_response
from oaksend.sandbox.validation import SEND_PATH, check_send, mask_phone

log = logging.getLogger("sandbox")

#: above 2**31 on purpose: a client storing SessionID in a 32-bit int breaks at once
FIRST_SESSION_ID = 123123123123
CONTROL_PREFIX = "/_sandbox"
#: The header that carries the sandbox's key to its control endpoints (all but /health): they show every
#: number and text it received, and change its behaviour.
CONTROL_KEY_HEADER = "x-sandbox-key"


@dataclass(frozen=True, slots=True)
class Action:
    """What the server does on the connection after reading a request."""

    response: Response | None  #: None: send nothing (hang or reset)
    delay_s: float = 0.0  #: wait before answering (latency), or how long to hang
    reset: bool = False  #: abort the connection (RST) after the delay; else, without a response, close it


class SandboxApp:
    """State of one fake API: config, records, limits, scripts, SessionIDs."""

    def __init__(self, config: Config, now_s: float) -> None:
        self.config = config
        self.records = Recorder()
        self.limiter = Limiter()
        self.scripts = Scripts()
        self._next_session_id = FIRST_SESSION_ID
        self._control_key = config.api_key  # the key it started with, even if POST /config changes the API's
        self._started_s = now_s
        self._burst_origin_s = now_s
        self._rng = random.Random()
        self._latency_rng = random.Random()
        self._seed(config.seed)

    def _seed(self, seed: int | None) -> None:
        # Two streams: turning latency on must not change which requests get which faults.
        self._rng.seed(seed)
        self._latency_rng.seed(None if seed is None else f"{seed}:latency")

    # --- requests

    def handle(self, request: Request, now_unix: float, now_s: float) -> Action:
        """The action for one request; ``now_unix`` is recorded, ``now_s`` (monotonic) drives limits."""
        if request.path == SEND_PATH:
            return self._send(request, now_unix, now_s)
        if request.path.startswith(CONTROL_PREFIX + "/"):
            return Action(self._control(request, now_s))
        return Action(error(404, f"Not Found: no endpoint at {request.path}"))

    def _send(self, request: Request, now_unix: float, now_s: float) -> Action:
        config = self.config
        check = check_send(request.method, request.headers, request.body, config.api_key)
        if check.serial is not None:
            self.limiter.observe(check.serial, now_s)

        outcome: Outcome | None = None
        scripted = False
        session_id = None
        if check.ok:
            assert check.serial is not None and check.phone is not None  # valid means both are there
            outcome, scripted = self._outcome(check.serial, check.phone, now_s)
            if outcome.issues_session:
                session_id = self._next_session_id
                self._next_session_id += 1

        if outcome is not None and outcome.kind == "hang":
            assert outcome.hang_s is not None
            action = Action(None, outcome.hang_s)
            status: int | str = "hang"
        else:
            delay_s = 0.0 if config.latency.is_zero else config.latency.sample_s(self._latency_rng)
            if outcome is None:
                assert check.error_status is not None
                allow = (("Allow", "POST"),) if check.error_status == 405 else ()
                action = Action(error(check.error_status, check.error_message, allow), delay_s)
            elif outcome.kind == "reset":
                action = Action(None, delay_s, reset=True)
            else:
                action = Action(for_outcome(outcome, session_id), delay_s)
            status = action.response.status if action.response is not None else "reset"

        record = Record(
            seq=self.records.next_seq,
            received_at=now_unix,
            serial_number=check.serial,
            to_phone_number=check.phone,
            message=check.message,
            auth_ok=check.auth_ok,
            fault=outcome.label if outcome is not None else "invalid",
            status=status,
            session_id=session_id,
            scripted=scripted,
            delay_ms=round(action.delay_s * 1000.0, 3),
            request_id=_request_id(request.headers),
        )
        self.records.add(record)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "send seq=%d serial=%s to=%s auth_ok=%s fault=%s status=%s session=%s",
                record.seq, check.serial, mask_phone(check.phone), check.auth_ok, record.fault, status, session_id,
            )
        return action

    def _outcome(self, serial: str, phone: str, now_s: float) -> tuple[Outcome, bool]:
        """The outcome of a valid request, and whether a script chose it.

        The limiter comes first: like a real gateway it rejects before any
        processing, so a scripted outcome is not consumed by a request over the limit.
        """
        config = self.config
        wait_s = self.limiter.admit(serial, config.limit_for(serial), now_s, config.limit_slack_ms / 1000.0)
        if wait_s > 0.0:
            return Outcome("http", 429, retry_after=max(1, math.ceil(wait_s)), label="limit"), False
        scripted = self.scripts.pop(phone, serial)
        if scripted is not None:
            return resolve(scripted, config, self._rng), True
        return decide(config, self._rng, now_s - self._burst_origin_s), False

    # --- control endpoints

    def _control(self, request: Request, now_s: float) -> Response:
        route = request.path[len(CONTROL_PREFIX):]
        routes: dict[str, dict[str, Callable[[], Any]]] = {
            "/health": {"GET": lambda: {"ok": True}},
            "/requests": {"GET": lambda: self._requests(request.query)},
            "/stats": {"GET": lambda: self.stats(now_s)},
            "/reset": {"POST": lambda: self.reset(now_s)},
            "/config": {
                "GET": self.config.public_dict,
                "POST": lambda: self._configure(request.body, now_s),
            },
            "/script": {"GET": lambda: {"pending": self.scripts.pending()}, "POST": lambda: self._script(request.body)},
        }
        methods = routes.get(route)
        if methods is None:
            return error(404, f"Not Found: no endpoint at {request.path}")
        given = request.headers.get(CONTROL_KEY_HEADER, "").encode("latin-1")
        if route != "/health" and not hmac.compare_digest(given, self._control_key.encode("utf-8")):
            return json_response({"error": "the control endpoints need the sandbox's key in X-Sandbox-Key"}, 401)
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(methods)
            return json_response({"error": f"use {allowed}"}, 405, (("Allow", allowed),))
        try:
            return json_response(handler())
        except ConfigError as exc:
            return json_response({"error": str(exc)}, 400)

    def _requests(self, query: str) -> list[dict[str, Any]]:
        params = parse_qs(query)
        try:
            since = int(params.get("since", ["0"])[-1])
        except ValueError:
            raise ConfigError("since must be an integer sequence number") from None
        return self.records.since(since)

    def stats(self, now_s: float) -> dict[str, Any]:
        """Counts over everything received since start or the last reset."""
        config = self.config
        serials = dict.fromkeys([*self.limiter.serials(), *config.limits])
        chatbots = self.limiter.snapshot({serial: config.limit_for(serial) for serial in serials})
        for serial, entry in chatbots.items():
            entry["by_status"] = dict(self.records.by_chatbot_status.get(serial, {}))
        return {
            "total": len(self.records),
            "uptime_s": round(now_s - self._started_s, 3),
            "sessions_issued": self.records.sessions_issued,
            "by_status": dict(self.records.by_status),
            "by_fault": dict(self.records.by_fault),
            "chatbots": chatbots,
            "scripts_pending": self.scripts.pending(),
        }

    def reset(self, now_s: float) -> dict[str, Any]:
        """Forgets records, counts, limiter state and scripts; keeps config and SessionIDs growing."""
        self.records.clear()
        self.limiter.reset()
        self.scripts.clear()
        self._burst_origin_s = now_s
        return {"ok": True}

    def _configure(self, body: bytes, now_s: float) -> dict[str, Any]:
        changes = _json_object(body)
        new = self.config.updated(changes)
        if any(normalize_name(name) == "seed" for name in changes):
            self._seed(new.seed)
        if (new.burst_429_every, new.burst_429_for) != (self.config.burst_429_every, self.config.burst_429_for):
            self._burst_origin_s = now_s  # a new burst schedule starts counting now
        self.config = new
        log.info("config changed: %s", ", ".join(sorted(changes)))  # names only: values may be secret
        return new.public_dict()

    def _script(self, body: bytes) -> dict[str, Any]:
        payload = _json_object(body)
        keys = [key for key in SCRIPT_KEYS if key in payload]
        responses = payload.get("responses")
        if len(keys) != 1 or not isinstance(payload[keys[0]], str):
            raise ConfigError(f"a script names exactly one of {', '.join(SCRIPT_KEYS)} (a string)")
        if not isinstance(responses, list) or not responses:
            raise ConfigError("responses must be a non-empty list of outcome tokens")
        queued = self.scripts.add(keys[0], payload[keys[0]], [str(token) for token in responses])
        return {keys[0]: payload[keys[0]], "queued": queued}


#: The longest X-Request-ID kept in a record (the head is capped anyway; an id is 32 hex digits).
MAX_REQUEST_ID_CHARS = 128


def _request_id(headers: dict[str, str]) -> str | None:
    """The request's X-Request-ID (the client's id for it), as recorded: stripped, bounded."""
    value = headers.get("x-request-id")
    return None if value is None else value.strip()[:MAX_REQUEST_ID_CHARS]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid JSON body: {exc}") from None
    if not isinstance(payload, dict):
        raise ConfigError("the body must be a JSON object")
    return payload
