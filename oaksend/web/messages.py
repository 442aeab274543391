"""The messages page, a message's story, and the retry / cancel actions.

No number or text ever travels in a URL: a search is a POST whose filter is kept server-side,
under the session, and the page's URL names it by a random reference (`/messages?f=...`).
Retry and cancel go through `Status.retry` / `Status.cancel` under the same audit as the CLI's,
after a confirmation that shows the exact count their own statements would change (rehearsed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from oaksend.errors import ValidationError
from oaksend.models.tables import STATES

if TYPE_CHECKING:
    from oaksend.web.app import Ctx, Web

PAGE = 50
#: "All matching this filter" acts on at most this many messages at once.
MAX_SELECTION = 100_000
DONE = {"retry": "retried", "cancel": "cancelled"}
#: Messages changed per transaction, as the CLI's bulk retry / cancel.
CHUNK = 500


def parse_search(form: dict[str, Any]) -> dict[str, Any]:
    """The filter a search form asks for; ValidationError naming the field. Pure."""
    from oaksend.worker.message.validation import check_phone

    out: dict[str, Any] = {}
    query = str(form.get("q") or "").strip()
    if query:
        if query.isdigit():
            out["id"] = int(query)
        else:
            out["phone"] = check_phone(query.replace(" ", "").replace("-", ""), "q")
    states = [s for s in (form.get("state[]") or []) if s]
    bad = [s for s in states if s not in STATES]
    if bad:
        raise ValidationError("state", f"{bad[0]!r} is not a state")
    if states:
        out["states"] = states
    for name in ("chatbot", "campaign"):
        value = str(form.get(name) or "").strip()
        if value:
            if name == "campaign" and not value.isdigit():
                raise ValidationError("campaign", "must be a campaign id")
            out[name] = int(value) if name == "campaign" else value[:64]
    for name in ("since", "until"):
        value = str(form.get(name) or "").strip()
        if value:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError(name, f"{value!r} is not a time") from None
            out[name] = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    return out


def find(web: Web, flt: dict[str, Any], before: int | None, limit: int) -> list[Any]:
    return list(web.outbox.find_messages(
        states=flt.get("states", ()), serial_number=flt.get("chatbot"), phone=flt.get("phone"),
        message_id=flt.get("id"), campaign_id=flt.get("campaign"),
        since=datetime.fromisoformat(flt["since"]) if flt.get("since") else None,
        until=datetime.fromisoformat(flt["until"]) if flt.get("until") else None, before_id=before, limit=limit))


def matching_ids(web: Web, flt: dict[str, Any]) -> list[int]:
    """Every id the filter matches (for "all matching"), at most MAX_SELECTION."""
    ids: list[int] = []
    before = None
    while len(ids) < MAX_SELECTION:
        rows = find(web, flt, before, 5000)
        ids += [r.id for r in rows]
        if len(rows) < 5000:
            break
        before = rows[-1].id
    return ids[:MAX_SELECTION]


def rehearse(web: Web, verb: str, ids: list[int], actor: str) -> dict[int, str]:
    """What retry / cancel would do now: their own statements in a transaction rolled back."""
    from oaksend.worker.clock import utcnow

    now = utcnow()
    with web.outbox.rehearsal() as box:
        if verb == "retry":
            return dict(box.operator_retry(ids, now, actor, None, renew_deadline_at=now))
        return dict(box.cancel(ids, now, actor))


def apply(web: Web, ctx: Ctx, verb: str, ids: list[int], selection: dict[str, Any]) -> dict[int, str]:
    """Retry or cancel through Status, the audit's intent written first (as `oaksend retry|cancel`)."""
    from oaksend.web.pages import actor_args
    from oaksend.worker.cli.brakes import audited, refused_of

    args = actor_args(ctx)
    results: dict[int, str] = {}
    with audited(web.outbox, args, verb, selection, result={"selected": len(ids)}) as audit:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            fn = web.status.retry if verb == "retry" else web.status.cancel
            results.update(fn(chunk, actor=args.actor))
            audit.progress(sum(1 for v in results.values() if v == DONE[verb]))
        audit.result["refused"] = refused_of(results, DONE[verb])
    return results


def _ids(form: dict[str, Any]) -> list[int]:
    raw = form.get("ids[]") or []
    if not all(str(v).isdigit() for v in raw):
        raise ValidationError("ids", "must be message ids")
    return sorted({int(v) for v in raw})


def routes(web: Web) -> list[Any]:
    from oaksend.web.app import route

    async def listing(request: Request, ctx: Ctx) -> Response:
        ref = request.query_params.get("f")
        flt = (await web.run(web.sessions.get_filter, ctx.token, ref)) or {} if ref else {}
        before = request.query_params.get("before")
        rows = await web.run(find, web, flt, int(before) if before and before.isdigit() else None, PAGE + 1)
        return web.render(ctx, "messages.html", page="messages", rows=rows[:PAGE], flt=flt, ref=ref or "",
                          more=rows[PAGE - 1].id if len(rows) > PAGE else None, states=STATES)

    async def search(request: Request, ctx: Ctx) -> Response:
        flt = parse_search(ctx.form)
        ref = await web.run(web.sessions.put_filter, ctx.token, flt)
        return web.redirect(ctx, f"/messages?f={ref}")

    async def act(request: Request, ctx: Ctx) -> Response:
        verb = str(ctx.form.get("verb") or "")
        if verb not in DONE:
            raise ValidationError("verb", "must be retry or cancel")
        ref = str(ctx.form.get("all") or "")
        flt = await web.run(web.sessions.get_filter, ctx.token, ref) if ref else None
        ids = await web.run(matching_ids, web, flt) if flt is not None else _ids(ctx.form)
        if not ids:
            raise ValidationError("ids", "select at least one message")
        back = str(ctx.form.get("back") or "/messages")
        back = back if back.startswith("/") and not back.startswith("//") else "/messages"
        if ctx.form.get("confirmed") != "1":
            from oaksend.web.pages import actor_args

            would = await web.run(rehearse, web, verb, ids, actor_args(ctx).actor)
            changing = [k for k, v in would.items() if v == DONE[verb]]
            refused: dict[str, int] = {}
            for v in would.values():
                if v != DONE[verb]:
                    refused[v] = refused.get(v, 0) + 1
            unknown = (await web.run(web.outbox.state_counts, changing)).get("unknown", 0) if verb == "retry" else 0
            warning = (f"{unknown} of them are unknown: their SMS may already have gone out, a retry can send it "
                       f"twice." if unknown else None)
            fields = {"verb": verb, "back": back, **({"all": ref} if flt is not None else {})}
            return web.render(ctx, "confirm.html", action=f"{ctx.base}/messages/act",
                              question=f"{verb.capitalize()} {len(changing)} of {len(ids)} selected messages?",
                              count=len(changing), refused=refused, warning=warning, fields=fields,
                              ids=[] if flt is not None else ids, button=f"{verb} {len(changing)} messages")
        selection: dict[str, Any] = {"ids": ids} if flt is None else {"filter": {k: v for k, v in flt.items()
                                                                                 if k != "phone"}}
        results = await web.run(apply, web, ctx, verb, ids, selection)
        done = sum(1 for v in results.values() if v == DONE[verb])
        web.flash(ctx, f"{verb}: {done} of {len(ids)} messages {DONE[verb]}")
        return web.redirect(ctx, back)

    async def story(request: Request, ctx: Ctx, revealed: bool = False) -> Response:
        mid = int(request.path_params["mid"])
        message = await web.run(web.status.get_message, mid)
        return web.render(ctx, "story.html", page="messages", m=message, revealed=revealed,
                          retryable=message.state in ("failed", "unknown", "expired", "cancelled"),
                          cancellable=message.state in ("pending", "dispatched"))

    async def live(request: Request, ctx: Ctx) -> Response:
        message = await web.run(web.status.get_message, int(request.path_params["mid"]))
        return web.render(ctx, "story_live.html", m=message)

    async def reveal(request: Request, ctx: Ctx) -> Response:
        from oaksend.web.pages import actor_args
        from oaksend.worker.clock import utcnow

        mid = int(request.path_params["mid"])
        await web.run(web.status.get_message, mid)  # NotFound first: never audit a reveal of nothing
        await web.run(web.outbox.record_audit, "web reveal", {"ids": [mid]}, 1, actor_args(ctx).actor, utcnow())
        return await story(request, ctx, revealed=True)

    g = web.guard
    return [route("/messages", g(listing)), route("/messages/search", g(search), ("POST",)),
            route("/messages/act", g(act, need="act"), ("POST",)),
            route("/messages/{mid:int}", g(story)), route("/messages/{mid:int}/live", g(live)),
            route("/messages/{mid:int}/reveal", g(reveal, need="reveal"), ("POST",))]
