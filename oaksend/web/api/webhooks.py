"""`/v1/webhooks`: endpoints (add, list, remove, rotate their secret) and their deliveries (list, retry).

Managing endpoints takes the `admin` scope. An endpoint made by a key limited to some
chatbots receives only their events, and such a key sees only such endpoints.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request

from oaksend.web.api.guard import GuardedRoute, Principal
from oaksend.web.api.messages import Admin
from oaksend.web.api.problems import Problem
from oaksend.web.api.schemas import EndpointIn
from oaksend.worker.clock import utcnow
from oaksend.worker.webhooks.endpoint import check_chatbots, check_events, check_url, new_salt
from oaksend.worker.webhooks.signing import derive_secret

__all__ = ["ROTATION_OVERLAP_S", "router"]

router = APIRouter(route_class=GuardedRoute)
#: After a rotation the previous secret signs too for this long (receivers switch meanwhile).
ROTATION_OVERLAP_S = 24 * 3600.0


def _secret(request: Request, salt: str) -> str:
    server_secret = request.app.state.api.settings.key_secret
    if not server_secret:
        raise Problem("unavailable", "webhook secrets are derived from OAKSEND_KEY_HASH_SECRET, which is not set")
    return derive_secret(server_secret, salt)


def _mine(who: Principal, chatbots: list[str] | None) -> bool:
    return who.chatbots is None or (chatbots is not None and set(chatbots) <= set(who.chatbots))


def endpoint_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "url": row.url, "events": row.events, "chatbots": row.chatbots,
            "failures": row.failures, "created_at": row.created_at.isoformat().replace("+00:00", "Z")}


def _endpoint(request: Request, who: Principal, endpoint_id: int) -> Any:
    row = request.app.state.api.outbox.endpoint(endpoint_id)
    if row is None or not _mine(who, row.chatbots):
        raise Problem("not-found", f"webhook endpoint {endpoint_id} not found")
    return row


@router.post("/webhooks", status_code=201, summary="Register an endpoint; its secret is shown in this answer")
def add(body: EndpointIn, request: Request, who: Admin) -> dict[str, Any]:
    url, events = check_url(body.url), check_events(body.events)
    chatbots = check_chatbots(body.chatbots) if body.chatbots is not None else (
        None if who.chatbots is None else list(who.chatbots))
    if not _mine(who, chatbots):
        raise Problem("forbidden", "chatbots: this API key may only watch its own chatbots", field="chatbots")
    salt = new_salt()
    secret = _secret(request, salt)
    outbox = request.app.state.api.outbox
    endpoint_id = outbox.add_endpoint(url=url, events=events, chatbots=chatbots, salt=salt, actor=who.actor,
                                      now=utcnow())
    return {**endpoint_json(outbox.endpoint(endpoint_id)), "secret": secret}


@router.get("/webhooks", summary="Registered endpoints")
def list_endpoints(request: Request, who: Admin) -> dict[str, Any]:
    rows = request.app.state.api.outbox.endpoints()
    return {"endpoints": [endpoint_json(r) for r in rows if _mine(who, r.chatbots)]}


@router.delete("/webhooks/{endpoint_id}", status_code=204, summary="Stop delivering to an endpoint")
def remove(endpoint_id: int, request: Request, who: Admin) -> None:
    _endpoint(request, who, endpoint_id)
    request.app.state.api.outbox.remove_endpoint(endpoint_id, utcnow())


@router.post("/webhooks/{endpoint_id}/rotate", summary="A new secret; the old one signs too for 24 h")
def rotate(endpoint_id: int, request: Request, who: Admin) -> dict[str, Any]:
    _endpoint(request, who, endpoint_id)
    salt = new_salt()
    secret = _secret(request, salt)
    request.app.state.api.outbox.rotate_endpoint(endpoint_id, salt, utcnow() + timedelta(seconds=ROTATION_OVERLAP_S))
    return {"id": endpoint_id, "secret": secret, "previous_valid_for_s": ROTATION_OVERLAP_S}


@router.get("/webhooks/{endpoint_id}/deliveries", summary="An endpoint's deliveries, newest first")
def deliveries(endpoint_id: int, request: Request, who: Admin, state: str | None = None,
               limit: int = 100, cursor: int | None = None) -> dict[str, Any]:
    _endpoint(request, who, endpoint_id)
    if not 1 <= limit <= 1000:
        raise Problem("invalid-field", "limit: from 1 to 1000", field="limit")
    rows = request.app.state.api.outbox.deliveries(endpoint_ids=[endpoint_id], state=state, limit=limit,
                                                   before_id=cursor)
    return {"deliveries": [delivery_json(r) for r in rows],
            "next_cursor": rows[-1].id if len(rows) == limit else None}


def delivery_json(r: Any) -> dict[str, Any]:
    return {"id": r.id, "event_id": r.event_id, "event": r.event, "message_id": r.message_id, "state": r.state,
            "attempts": r.attempts, "last_status": r.last_status, "last_error": r.last_error,
            "next_attempt_at": r.next_attempt_at.isoformat().replace("+00:00", "Z"),
            "delivered_at": None if r.delivered_at is None else r.delivered_at.isoformat().replace("+00:00", "Z")}


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry", summary="Deliver again")
def redeliver(endpoint_id: int, delivery_id: int, request: Request, who: Admin) -> dict[str, Any]:
    _endpoint(request, who, endpoint_id)
    outbox = request.app.state.api.outbox
    if not any(r.id == delivery_id for r in outbox.deliveries(endpoint_ids=[endpoint_id], before_id=delivery_id + 1,
                                                              limit=1)):
        raise Problem("not-found", f"delivery {delivery_id} of endpoint {endpoint_id} not found")
    if not outbox.retry_delivery(delivery_id, utcnow()):
        raise Problem("invalid-state", f"delivery {delivery_id} is still pending")
    return {"id": delivery_id, "state": "pending"}
