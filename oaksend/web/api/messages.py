"""`/v1/messages`: send one or a batch, read one, list, retry, cancel. Thin over Producer and Status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPBearer
from starlette.responses import JSONResponse

from oaksend.errors import NotFound
from oaksend.web.api.guard import GuardedRoute, Principal
from oaksend.web.api.problems import Problem
from oaksend.web.api.schemas import BatchIn, MessageIn, message_json
from oaksend.worker.message.validation import SendRequest

__all__ = ["Admin", "Operator", "Reader", "Sender", "need", "router"]

router = APIRouter(route_class=GuardedRoute)
_bearer = HTTPBearer(auto_error=False, description="an API key: `oaksend api-key create`")


def need(scope: str) -> Any:
    """A dependency: the request's key, which must have `scope` (admin has every scope)."""

    def check(request: Request, _token: Annotated[Any, Security(_bearer)] = None) -> Principal:
        who: Principal = request.state.principal
        if not who.may(scope):
            raise Problem("forbidden", f"this API key lacks the {scope!r} scope")
        return who

    return Depends(check)


Sender = Annotated[Principal, need("send")]
Reader = Annotated[Principal, need("read")]
Operator = Annotated[Principal, need("operate")]
Admin = Annotated[Principal, need("admin")]


def _allowed(who: Principal, chatbot: str, field: str) -> None:
    if not who.sees(chatbot):
        raise Problem("forbidden", f"{field}: this API key may not use chatbot {chatbot!r}", field=field)


def _request(m: MessageIn, key: str | None) -> SendRequest:
    return SendRequest(m.chatbot, m.to, m.text, m.idempotency_key or key, m.send_at, m.deadline, m.metadata,
                       m.priority)


@router.post("/messages", status_code=201, summary="Send one message")
def send(body: MessageIn, request: Request, who: Sender) -> JSONResponse:
    _allowed(who, body.chatbot, "chatbot")
    r = _request(body, request.headers.get("idempotency-key"))
    message_id = request.app.state.api.producer.send(
        r.serial_number, r.to, r.text, idempotency_key=r.idempotency_key, send_at=r.send_at, deadline=r.deadline,
        metadata=r.metadata, priority=r.priority)
    return JSONResponse({"id": message_id}, status_code=201, headers={"location": f"messages/{message_id}"})


@router.post("/messages/batch", status_code=201, summary="Send up to 10,000 messages (all or none)")
def send_batch(body: BatchIn, request: Request, who: Sender) -> JSONResponse:
    for i, m in enumerate(body.messages):
        _allowed(who, m.chatbot, f"messages[{i}].chatbot")
    key = request.headers.get("idempotency-key")
    ids = request.app.state.api.producer.send_many(
        [_request(m, None if key is None else f"{key}:{i}") for i, m in enumerate(body.messages)])
    return JSONResponse({"ids": ids}, status_code=201)


def _visible(request: Request, who: Principal, message_id: int) -> Any:
    try:
        message = request.app.state.api.status.get_message(message_id)
    except NotFound:
        message = None
    if message is None or not who.sees(message.chatbot):  # another tenant's message does not exist for this key
        raise Problem("not-found", f"message {message_id} not found")
    return message


@router.get("/messages/{message_id}", summary="A message with its attempts")
def read(message_id: int, request: Request, who: Reader) -> dict[str, Any]:
    return message_json(_visible(request, who, message_id))


@router.get("/messages", summary="Messages, newest first, one page at a time")
def list_messages(request: Request, who: Reader,
                  state: Annotated[list[str] | None, Query()] = None, chatbot: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50, cursor: str | None = None) -> dict[str, Any]:
    if chatbot is not None:
        _allowed(who, chatbot, "chatbot")
    elif who.chatbots is not None:
        if len(who.chatbots) != 1:
            raise Problem("invalid-field", "chatbot: required, this API key is limited to several chatbots",
                          field="chatbot")
        chatbot = who.chatbots[0]
    page = request.app.state.api.status.list_messages(state=state, chatbot=chatbot, since=since, until=until,
                                                      limit=limit, cursor=cursor)
    return {"messages": [message_json(m) for m in page.messages], "next_cursor": page.next_cursor}


def _act(request: Request, who: Principal, message_id: int, verb: str) -> dict[str, Any]:
    _visible(request, who, message_id)
    api = request.app.state.api
    from oaksend.worker.clock import utcnow

    audit = api.outbox.begin_audit(f"api {verb}", {"ids": [message_id]}, who.actor, utcnow())
    try:
        act = api.status.retry if verb == "retry" else api.status.cancel
        result = act([message_id], actor=who.actor)[message_id]
    except BaseException as exc:
        api.outbox.finish_audit(audit, "failed", 0, {"error": type(exc).__name__}, utcnow())
        raise
    done = result in ("retried", "cancelled")
    api.outbox.finish_audit(audit, "done", int(done), None if done else {"refused": result}, utcnow())
    if not done:
        raise Problem("invalid-state", f"message {message_id} {result}")
    return {"id": message_id, "result": result}


@router.post("/messages/{message_id}/retry", summary="Send a failed, unknown, expired or cancelled message again")
def retry(message_id: int, request: Request, who: Operator) -> dict[str, Any]:
    return _act(request, who, message_id, "retry")


@router.post("/messages/{message_id}/cancel", summary="Cancel a message not sent yet")
def cancel(message_id: int, request: Request, who: Operator) -> dict[str, Any]:
    return _act(request, who, message_id, "cancel")
