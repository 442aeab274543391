"""The overview, chatbots, campaigns, audit and health pages, and the chatbot and campaign actions.

Actions go through the code the CLI runs: the repository's pause / resume / set_limit with the rate
limiter's mirror in Redis, the campaign service, and the audit's intent written before acting.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from oaksend.errors import ValidationError
from oaksend.web.charts import minute_labels, per_minute_chart

if TYPE_CHECKING:
    from oaksend.web.app import Ctx, Web

#: What each campaign action does to its unsent messages (as `oaksend campaign`).
CAMPAIGN_DONE = {"pause": "held", "resume": "released", "cancel": "cancelled"}


def actor_args(ctx: Ctx) -> argparse.Namespace:
    """What the CLI's audit reads from its arguments: the actor (the dashboard user) and no note."""
    assert ctx.user is not None
    return argparse.Namespace(actor=f"web:{ctx.user.name}", note=None)


def overview_data(web: Web) -> dict[str, Any]:
    from oaksend.worker.clock import utcnow
    from oaksend.worker.delivery.heartbeat import dispatcher_heartbeat, redis_time

    now = utcnow()
    box = web.outbox
    activity = box.activity_per_minute(now - timedelta(minutes=60))
    labels = minute_labels(now, 60)
    series: dict[str, dict[str, int]] = {"sent": {}, "failed": {}, "retried": {}}
    names = {"sent": "sent", "final": "failed", "retry": "retried", "ambiguous": "retried"}
    for (minute, cls), n in activity.items():
        if cls in names:
            bucket = series[names[cls]]
            bucket[minute] = bucket.get(minute, 0) + n
    oldest = box.oldest_due_at(now)
    redis_now = redis_time(web.redis)
    beats: list[tuple[Any, float]] = list(web.redis.zrange(web.settings.keys.workers, 0, -1,  # type: ignore[arg-type]
                                                           withscores=True))
    workers = sorted(((m.decode() if isinstance(m, bytes) else str(m)), redis_now - float(s)) for m, s in beats)
    paused = [(sn, c.pause_reason, c.paused_until) for sn, c in sorted(box.chatbots().items())
              if c.paused_until is not None and c.paused_until > now]
    return {"counts": box.counts(), "chart": per_minute_chart(labels, series, "attempts per minute, last hour"),
            "backlog": box.due_backlog(now), "oldest_age": None if oldest is None else (now - oldest).total_seconds(),
            "workers": workers, "ttl": web.settings.worker_heartbeat_ttl_s,
            "dispatcher": dispatcher_heartbeat(web.redis, web.settings.keys), "paused": paused}


def chatbot_rows(web: Web) -> list[dict[str, Any]]:
    from oaksend.models.tables import OPEN_STATES
    from oaksend.worker.clock import utcnow

    now = utcnow()
    rows = web.outbox.chatbots()
    backlog: dict[str, int] = {}
    for sn, state, n in web.outbox.counts_by_chatbot():
        backlog.setdefault(sn, 0)
        if state in OPEN_STATES:
            backlog[sn] += n
    sent = web.outbox.sent_since_by_chatbot(now - timedelta(hours=1))
    out = []
    for sn in sorted(set(rows) | set(backlog)):
        c = rows.get(sn)
        paused = c is not None and c.paused_until is not None and c.paused_until > now
        out.append({"sn": sn, "rate": c.rate_per_s if c and c.rate_per_s else web.settings.default_rate_per_s,
                    "burst": c.burst if c and c.burst else web.settings.default_burst,
                    "segments": c.segments_per_s if c else None, "configured": c is not None and c.rate_per_s,
                    "paused": paused, "until": c.paused_until if paused and c else None,
                    "reason": c.pause_reason if paused and c else None,
                    "backlog": backlog.get(sn, 0), "sent_hour": sent.get(sn, 0)})
    return out


def _number(form: dict[str, Any], name: str, *, integer: bool = False) -> Any:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ValidationError(name, f"{raw!r} is not a number") from None
    if value <= 0:
        raise ValidationError(name, "must be greater than 0")
    return value


def chatbot_action(web: Web, ctx: Ctx) -> str:
    """Pause, resume or set a limit, audited as `oaksend chatbot` is; returns what was done."""
    from oaksend.worker.cli.brakes import audited
    from oaksend.worker.clock import utcnow
    from oaksend.worker.delivery.ratelimit import RateLimiter
    from oaksend.worker.message.validation import check_serial_number

    form, args, now = ctx.form, actor_args(ctx), utcnow()
    sn = check_serial_number(str(form.get("sn") or ""))
    verb = form.get("verb")
    box, limiter = web.outbox, RateLimiter(web.redis, web.settings.keys)
    if verb == "set-limit":
        limits = {"rate_per_s": _number(form, "rate"), "burst": _number(form, "burst", integer=True),
                  "segments_per_s": _number(form, "segments_per_s")}
        with audited(box, args, "chatbot set-limit", {"chatbot": sn, **limits}):
            box.set_limit(sn, now, **limits)
        return f"{sn}: limit set"
    if verb == "pause":
        for_s = _number(form, "for_s")
        note = str(form.get("reason") or "").strip()[:500] or None
        until = now + timedelta(seconds=for_s or 3650 * 86400)
        reason = f"paused by operator{': ' + note if note else ''}"
        with audited(box, args, "chatbot pause", {"chatbot": sn, "for_s": for_s}, note=note,
                     result={"paused_until": until.isoformat()}):
            box.pause(sn, until, reason, now)
            limiter.pause(sn, until, now)
        return f"{sn}: paused"
    if verb == "resume":
        with audited(box, args, "chatbot resume", {"chatbot": sn}) as audit:
            audit.result["was_paused"] = box.resume(sn, now)
            limiter.resume(sn)
        return f"{sn}: resumed" if audit.result["was_paused"] else f"{sn}: was not paused"
    raise ValidationError("verb", "must be pause, resume or set-limit")


def campaign_rows(web: Web) -> list[dict[str, Any]]:
    out = []
    for c in web.outbox.campaigns():
        counts = web.outbox.campaign_counts(c.id)
        total = sum(counts.values())
        done = sum(n for s, n in counts.items() if s in ("sent", "failed", "expired", "cancelled", "unknown"))
        out.append({"c": c, "counts": counts, "skipped": dict(c.skipped or {}), "total": total,
                    "progress": round(100 * done / total) if total else 0})
    return out


def campaign_action(web: Web, ctx: Ctx, verb: str, campaign_id: int, *, rehearse: bool) -> int:
    """A campaign's pause / resume / cancel through its service, audited as `oaksend campaign` is;
    rehearsed (run and rolled back) for the confirmation's exact count."""
    from oaksend.worker.campaigns.service import Campaigns
    from oaksend.worker.cli.brakes import audited

    if rehearse:
        with web.outbox.rehearsal() as box:
            return int(getattr(Campaigns(web.settings, outbox=box, redis_client=web.redis), verb)(campaign_id))
    service = Campaigns(web.settings, outbox=web.outbox, redis_client=web.redis)
    with audited(web.outbox, actor_args(ctx), f"campaign {verb}", {"campaign": campaign_id}) as audit:
        n = int(getattr(service, verb)(campaign_id))
        audit.count = n
        audit.result[CAMPAIGN_DONE[verb]] = n
    return n


def routes(web: Web) -> list[Any]:
    from oaksend.web.app import route

    async def overview(request: Request, ctx: Ctx) -> Response:
        return web.render(ctx, "overview.html", page="overview", **await web.run(overview_data, web))

    async def overview_live(request: Request, ctx: Ctx) -> Response:
        return web.render(ctx, "overview_live.html", **await web.run(overview_data, web))

    async def chatbots(request: Request, ctx: Ctx) -> Response:
        return web.render(ctx, "chatbots.html", page="chatbots", rows=await web.run(chatbot_rows, web))

    async def chatbots_act(request: Request, ctx: Ctx) -> Response:
        from oaksend.web.auth import allowed

        if ctx.form.get("verb") == "set-limit" and not allowed(ctx.user, "limits"):
            return web.refuse(ctx, 403, "your role does not allow this")
        web.flash(ctx, await web.run(chatbot_action, web, ctx))
        return web.redirect(ctx, "/chatbots")

    async def campaigns(request: Request, ctx: Ctx) -> Response:
        return web.render(ctx, "campaigns.html", page="campaigns", rows=await web.run(campaign_rows, web))

    async def campaigns_act(request: Request, ctx: Ctx) -> Response:
        verb = str(ctx.form.get("verb") or "")
        if verb not in CAMPAIGN_DONE:
            raise ValidationError("verb", "must be pause, resume or cancel")
        cid = _number(ctx.form, "id", integer=True)
        if cid is None:
            raise ValidationError("id", "is required")
        if verb != "pause" and ctx.form.get("confirmed") != "1":  # pause is an emergency stop: never asks
            n = await web.run(campaign_action, web, ctx, verb, cid, rehearse=True)
            return web.render(ctx, "confirm.html", action=f"{ctx.base}/campaigns/act",
                              question=f"{verb.capitalize()} campaign {cid}? {n} unsent messages will be "
                                       f"{CAMPAIGN_DONE[verb]}.",
                              warning="A cancelled campaign cannot be resumed." if verb == "cancel" else None,
                              fields={"verb": verb, "id": str(cid)}, ids=[], button=f"{verb} campaign")
        n = await web.run(campaign_action, web, ctx, verb, cid, rehearse=False)
        web.flash(ctx, f"campaign {cid}: {n} messages {CAMPAIGN_DONE[verb]}")
        return web.redirect(ctx, "/campaigns")

    async def audit(request: Request, ctx: Ctx) -> Response:
        command = (request.query_params.get("command") or "").strip()[:200] or None
        actor = (request.query_params.get("actor") or "").strip()[:200] or None
        before = request.query_params.get("before")
        rows = await web.run(web.outbox.audit_page, command=command, actor=actor,
                             before_id=int(before) if before and before.isdigit() else None, limit=51)
        return web.render(ctx, "audit.html", page="audit", rows=rows[:50], command=command or "",
                          actor=actor or "", more=rows[49].id if len(rows) > 50 else None)

    async def health(request: Request, ctx: Ctx) -> Response:
        from oaksend.worker.ops.health import check, healthy

        checks = await web.run(check, web.settings)
        return web.render(ctx, "health.html", status_code=200 if healthy(checks) else 503, page="health",
                          checks=checks, ok=healthy(checks))

    async def health_json(request: Request, ctx: Ctx) -> Response:
        from oaksend.worker.ops.health import check, healthy

        checks = await web.run(check, web.settings)
        return JSONResponse({"healthy": healthy(checks),
                             "checks": [{"part": c.part, "ok": c.ok, "detail": c.detail} for c in checks]},
                            status_code=200 if healthy(checks) else 503)

    g = web.guard
    return [route("/", g(overview)), route("/overview/live", g(overview_live)),
            route("/chatbots", g(chatbots)), route("/chatbots/act", g(chatbots_act, need="chatbot"), ("POST",)),
            route("/campaigns", g(campaigns)),
            route("/campaigns/act", g(campaigns_act, need="campaign"), ("POST",)),
            route("/audit", g(audit)), route("/health", g(health)), route("/health.json", g(health_json))]
