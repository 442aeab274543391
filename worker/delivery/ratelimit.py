"""Per-chatbot rate limits shared by every worker: one atomic Redis script per admission.

GCRA (the generic cell rate algorithm) on Redis's own clock (`TIME`), so the
workers' clocks do not matter. For emission interval T = 1/rate and a burst of
B, any window of length W admits at most W/T + B requests. A second, optional
limit counts SMS segments instead of messages; a request must pass both.

The script also honours a pause key (set after a 429 or an auth failure), so a
pause reaches every worker at once. All of this state may be lost (FLUSHALL,
restart without persistence): it rebuilds itself, since an absent key means
"no recent sends", and pauses are also kept in the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

import redis

from oaksend.worker.keys import Keys

#: KEYS: message tat, segment tat, pause.
#: ARGV: T_msg_ms, burst, T_seg_ms (0 = none), cost_segments, max_wait_ms.
#: Returns {allowed, wait_ms, paused}. With max_wait_ms > 0 a slot up to that far ahead
#: is reserved: the caller sleeps wait_ms and then sends, so waiters never race.
_GCRA = """
local pause_ms = redis.call('PTTL', KEYS[3])
if pause_ms and pause_ms > 0 then
  return {0, pause_ms, 1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local seg_interval = tonumber(ARGV[3])
local segments = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5] or '0')

local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now

local seg_new_tat = 0
if seg_interval > 0 then
  local seg_tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if seg_tat < now then seg_tat = now end
  seg_new_tat = seg_tat + seg_interval * segments
  -- a message longer than the burst could never pass otherwise: it passes alone
  local allowance = math.max(burst, segments) * seg_interval
  local seg_wait = seg_new_tat - allowance - now
  if seg_wait > wait then wait = seg_wait end
end

if wait > max_wait then
  return {0, math.ceil(wait), 0}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
if seg_interval > 0 then
  redis.call('SET', KEYS[2], string.format('%.3f', seg_new_tat), 'PX', math.ceil(seg_new_tat - now) + 1000)
end
if wait < 0 then wait = 0 end
return {1, math.ceil(wait), 0}
"""


#: KEYS: message tat, hold. Returns {ms of slots already reserved ahead of now, hold pttl}.
_AHEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local ahead = tat - now
if ahead < 0 then ahead = 0 end
return {math.floor(ahead), redis.call('PTTL', KEYS[2])}
"""


#: The same GCRA for a group of one chatbot's messages in ONE round trip: slots are
#: reserved in order while each is at most max_wait_ms away.
#: KEYS: message tat, segment tat, pause. ARGV: T_msg_ms, burst, T_seg_ms, max_wait_ms, lead_ms, cost_1..cost_n.
#: The requests will leave `lead_ms` after now at the earliest (the caller marks them first):
#: the slots are computed for that time, so every caller shifts by the same lead and the
#: spacing the API sees is the limit's.
#: Returns {paused, wait_ms of the first refused (-1: none refused), wait_ms of each admitted...},
#: waits counted from now + lead_ms.
_GCRA_MANY = """
local pause_ms = redis.call('PTTL', KEYS[3])
if pause_ms and pause_ms > 0 then
  return {1, pause_ms}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[5])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local seg_interval = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local seg_tat = now
if seg_interval > 0 then
  seg_tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if seg_tat < now then seg_tat = now end
end
local out = {0, -1}
for i = 6, #ARGV do
  local segments = tonumber(ARGV[i])
  local new_tat = tat + interval
  local wait = new_tat - burst * interval - now
  local seg_new_tat = seg_tat
  if seg_interval > 0 then
    seg_new_tat = seg_tat + seg_interval * segments
    local allowance = math.max(burst, segments) * seg_interval
    local seg_wait = seg_new_tat - allowance - now
    if seg_wait > wait then wait = seg_wait end
  end
  if wait > max_wait then
    out[2] = math.ceil(wait)
    break
  end
  tat = new_tat
  seg_tat = seg_new_tat
  if wait < 0 then wait = 0 end
  out[#out + 1] = math.ceil(wait)
end
if #out > 2 then
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  if seg_interval > 0 then
    redis.call('SET', KEYS[2], string.format('%.3f', seg_tat), 'PX', math.ceil(seg_tat - now) + 1000)
  end
end
return out
"""


@dataclass(frozen=True)
class Limit:
    """A chatbot's limit: `rate_per_s` messages per second with a burst, and optionally segments per second."""

    rate_per_s: float
    burst: int = 1
    segments_per_s: float | None = None


#: A burst of 1 has no tolerance to share: its requests may leave this late (a limiter's
#: usual slack), or half of what is left of the last interval in a second if that is less.
LATE_SLACK_S = 0.02


def lateness(limit: Limit) -> tuple[Limit, float]:
    """Pure: (the limit to reserve slots with, how late after its slot a request may still leave).

    The API counts arrivals, and a request arrives after its slot twice over: it leaves
    a little late (the event loop, the GIL), then the network and the API's own
    scheduling shift it again. Either way it lands among the next requests, which are
    on time, and past the burst a strict limiter refuses (429) and the chatbot pauses.
    So the burst is not spent on reservations: slots are reserved a whole interval
    apart (a burst of 1), and the other burst - 1 intervals are tolerance, half for
    leaving late and half for the arrival's jitter. Where the limit binds (`binds`), a
    request may leave at most (burst - 1) / 2 intervals after its slot, plus half of what
    a fractional rate leaves of the last interval in a second (at most LATE_SLACK_S); a
    later one is not made but handed back (transport.Call). Any 1 s of arrivals then
    holds at most rate + burst requests even if each arrival shifts by as much again as
    it left late: at 500/s with a burst of 10, 10 ms late and 10 ms of jitter.
    """
    interval = 1.0 / limit.rate_per_s
    burst = max(1, limit.burst)
    # Within a 1 s window, what is left of the last interval (a fractional rate leaves less).
    room = interval * (1.0 - math.modf(limit.rate_per_s)[0])
    return replace(limit, burst=1), (burst - 1) * interval / 2 + min(room / 2, LATE_SLACK_S)


def binds(limit: Limit, waits_s: list[float]) -> bool:
    """Pure: whether the limit binds a group whose slots are `waits_s` away: some request
    would have waited for its slot even had the whole burst been reserved.

    Only then are on-time requests on a late one's heels, and lateness is held
    (`lateness`). Elsewhere the chatbot's slots come faster than its requests can leave
    (an "unlimited" chatbot's slots are microseconds apart, and a loop starting fifty
    requests makes the last ones late) or the chatbot was idle: handing a late request
    back would only cost a dispatch.
    """
    # The waits come back in whole milliseconds, rounded up (_GCRA_MANY).
    burst_s = (max(1, limit.burst) - 1) / limit.rate_per_s + 0.001
    return any(wait > burst_s for wait in waits_s)


@dataclass(frozen=True)
class GroupAdmission:
    """Slots reserved for the first `len(waits_s)` messages of a group, each to be sent
    after its wait; the rest were refused (`retry_in_s`: when to come back)."""

    waits_s: list[float]
    retry_in_s: float = 0.0
    paused: bool = False


@dataclass(frozen=True)
class Admission:
    """The answer of one admission: allowed now, or wait this long (paused: an API or operator pause)."""

    allowed: bool
    wait_s: float = 0.0
    paused: bool = False


class RateLimiter:
    """Admission control for sends, shared by all worker processes through Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self.redis = client
        self._script = client.register_script(_GCRA)
        self._ahead = client.register_script(_AHEAD)
        self._many = client.register_script(_GCRA_MANY)

    def admit(self, serial_number: str, limit: Limit, segments: int = 1) -> Admission:
        """Take one token for `serial_number` if its limit allows it now (else: how long to wait)."""
        return self.reserve(serial_number, limit, segments, max_wait_s=0.0)

    def reserve(self, serial_number: str, limit: Limit, segments: int = 1, *, max_wait_s: float) -> Admission:
        """Reserve the next slot if it is at most `max_wait_s` away.

        Allowed with `wait_s` > 0 means: the slot is yours, send after sleeping
        `wait_s`. Not allowed means nothing was taken; `wait_s` says when to come back.
        """
        interval_ms = 1000.0 / limit.rate_per_s
        seg_interval_ms = 1000.0 / limit.segments_per_s if limit.segments_per_s else 0
        allowed, wait_ms, paused = self._script(
            keys=self.keys.chatbot(serial_number)[:3],
            args=[f"{interval_ms:.6f}", max(1, limit.burst), f"{seg_interval_ms:.6f}", max(1, segments),
                  int(max_wait_s * 1000)],
        )
        return Admission(bool(allowed), float(wait_ms) / 1000.0, bool(paused))

    def reserve_many(self, serial_number: str, limit: Limit, segments: list[int], *,
                     max_wait_s: float, lead_s: float = 0.0) -> GroupAdmission:
        """Reserve consecutive slots for a group of messages, in order, while each is at
        most `max_wait_s` away: one round trip for the whole group. The waits count
        from `lead_s` after now (see _GCRA_MANY)."""
        if not segments:
            return GroupAdmission([])
        interval_ms = 1000.0 / limit.rate_per_s
        seg_interval_ms = 1000.0 / limit.segments_per_s if limit.segments_per_s else 0
        out = self._many(
            keys=self.keys.chatbot(serial_number)[:3],
            args=[f"{interval_ms:.6f}", max(1, limit.burst), f"{seg_interval_ms:.6f}", int(max_wait_s * 1000),
                  int(lead_s * 1000), *[max(1, int(s)) for s in segments]],
        )
        if int(out[0]):
            return GroupAdmission([], float(out[1]) / 1000.0, True)
        waits = [float(w) / 1000.0 for w in out[2:]]
        return GroupAdmission(waits, max(0.0, float(out[1]) / 1000.0))

    def paused(self, serial_number: str) -> bool:
        """Whether the chatbot is paused right now (an API 429 or an operator)."""
        return bool(self.redis.exists(self.keys.chatbot(serial_number)[2]))

    def ahead(self, serial_number: str) -> tuple[float, float]:
        """(seconds of slots already reserved ahead of now, seconds the dispatcher should hold off)."""
        keys = self.keys.chatbot(serial_number)
        ahead_ms, hold_ms = self._ahead(keys=[keys[0], keys[3]])
        return float(ahead_ms) / 1000.0, max(0.0, float(hold_ms) / 1000.0)

    def hold(self, serial_number: str, seconds: float) -> None:
        """A worker was throttled: ask the dispatcher not to send this chatbot more for a while.

        Without it, each throttled message handed back would make room for the next
        row of the backlog to be dispatched and throttled in turn.
        """
        ms = int(seconds * 1000)
        if ms > 0:
            self.redis.set(self.keys.chatbot(serial_number)[3], "1", px=ms)

    def pause(self, serial_number: str, until: datetime, now: datetime) -> None:
        """Pause every send of this chatbot until `until` (mirrors the database's pause)."""
        ms = int((until - now).total_seconds() * 1000)
        if ms > 0:
            self.redis.set(self.keys.chatbot(serial_number)[2], "1", px=ms)

    def resume(self, serial_number: str) -> None:
        self.redis.delete(self.keys.chatbot(serial_number)[2])

    def sync_pauses(self, paused: dict[str, datetime], now: datetime) -> None:
        """Re-create pause keys from the database (after Redis lost them)."""
        for serial_number, until in paused.items():
            if until > now:
                self.pause(serial_number, until, now)

