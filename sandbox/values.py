"""The sandbox's configuration values and their parsers, one per kind of field.

Flags, ``SANDBOX_*`` environment variables and the runtime ``POST /_sandbox/config``
body all go through these (oaksend.sandbox.config), so they cannot drift apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oaksend.sandbox.exceptions import ConfigError


@dataclass(frozen=True, slots=True)
class Latency:
    """Added response delay, in milliseconds: fixed or drawn from a distribution."""

    kind: str = "fixed"  #: fixed | uniform | normal | exp
    a_ms: float = 0.0  #: fixed value, uniform low, normal mean, exp mean
    b_ms: float = 0.0  #: uniform high, normal standard deviation

    def sample_s(self, rng: random.Random) -> float:
        """One delay in seconds (never negative)."""
        if self.kind == "fixed":
            ms = self.a_ms
        elif self.kind == "uniform":
            ms = rng.uniform(self.a_ms, self.b_ms)
        elif self.kind == "normal":
            ms = rng.gauss(self.a_ms, self.b_ms)
        else:  # exp
            ms = rng.expovariate(1.0 / self.a_ms) if self.a_ms > 0 else 0.0
        return max(ms, 0.0) / 1000.0

    @property
    def is_zero(self) -> bool:
        return self.kind == "fixed" and self.a_ms == 0

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.a_ms:g}"
        if self.kind == "exp":
            return f"exp:{self.a_ms:g}"
        return f"{self.kind}:{self.a_ms:g},{self.b_ms:g}"


@dataclass(frozen=True, slots=True)
class Limit:
    """A server-side rate limit of one chatbot: ``rate_per_s`` with ``burst`` requests at once."""

    rate_per_s: float
    burst: int = 1

    def __str__(self) -> str:
        return f"{self.rate_per_s:g}:{self.burst}"

    def to_json(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate_per_s, "burst": self.burst}


# --- value parsers: each accepts a string (flag, env) or an already typed JSON value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what}: expected a finite number, got {value!r}")
    return number


def _integer(value: Any, what: str) -> int:
    number = _number(value, what)
    if number != int(number):
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    return int(number)


def parse_probability(value: Any) -> float:
    p = _number(value, "probability")
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"probability must be within [0, 1], got {value!r}")
    return p


def parse_non_negative(value: Any) -> float:
    """Seconds or milliseconds: the unit is in the setting's name."""
    number = _number(value, "duration")
    if number < 0:
        raise ConfigError(f"duration must not be negative, got {value!r}")
    return number


def parse_retry_after(value: Any) -> int:
    """Whole seconds for the Retry-After header; a negative value omits the header."""
    return _integer(value, "retry-after")


def parse_port(value: Any) -> int:
    port = _integer(value, "port")
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be within 0..65535, got {value!r}")
    return port


def parse_seed(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "none")):
        return None
    return _integer(value, "seed")


def parse_optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    return value


def parse_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a non-empty string, got {value!r}")
    return value


def parse_log_level(value: Any) -> str:
    level = parse_str(value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"unknown log level {value!r}")
    return level


def parse_latency(value: Any) -> Latency:
    """``20`` (fixed ms), ``uniform:10,50``, ``normal:30,10`` or ``exp:20``."""
    if isinstance(value, Latency):
        return value
    if not isinstance(value, str):
        ms = _number(value, "latency")
        if ms < 0:
            raise ConfigError(f"latency must not be negative, got {value!r}")
        return Latency("fixed", ms)
    kind, sep, args = value.strip().partition(":")
    if not sep:
        kind, args = "fixed", kind
    kind = kind.lower()
    arity = {"fixed": 1, "exp": 1, "uniform": 2, "normal": 2}
    if kind not in arity:
        raise ConfigError(f"latency: unknown distribution {kind!r} (fixed, uniform, normal, exp)")
    parts = [p for p in args.split(",") if p.strip()]
    if len(parts) != arity[kind]:
        raise ConfigError(f"latency: {kind} takes {arity[kind]} value(s) in ms, got {value!r}")
    numbers = [_number(p, "latency") for p in parts]
    if any(n < 0 for n in numbers):
        raise ConfigError(f"latency values must not be negative, got {value!r}")
    if kind == "uniform" and numbers[0] > numbers[1]:
        raise ConfigError(f"latency: uniform low is above high in {value!r}")
    return Latency(kind, numbers[0], numbers[1] if len(numbers) > 1 else 0.0)


def parse_limit(value: Any) -> Limit:
    """``RATE[:BURST]``: requests per second (may be fractional) and a burst of at least 1."""
    if isinstance(value, Limit):
        return value
    if isinstance(value, Mapping):
        rate, burst = value.get("rate_per_s"), value.get("burst", 1)
    elif isinstance(value, str):
        rate, _, burst_text = value.strip().partition(":")
        burst = burst_text or 1
    else:
        rate, burst = value, 1
    limit = Limit(_number(rate, "limit rate"), _integer(burst, "limit burst"))
    if limit.rate_per_s <= 0 or limit.burst < 1:
        raise ConfigError(f"limit needs a rate > 0 and a burst >= 1, got {value!r}")
    return limit


def parse_optional_limit(value: Any) -> Limit | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "none")):
        return None
    return parse_limit(value)


def parse_limits(value: Any) -> dict[str, Limit]:
    """``SN1=5:1,SN2=20:2``, a list of ``SERIAL=RATE[:BURST]``, or ``{"SN1": "5:1"}``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {parse_str(serial): parse_limit(limit) for serial, limit in value.items()}
    entries: Iterable[Any]
    if isinstance(value, str):
        entries = value.split(",")
    elif isinstance(value, Sequence):
        entries = [part for item in value for part in str(item).split(",")]
    else:
        raise ConfigError(f"limits: expected SERIAL=RATE[:BURST] entries, got {value!r}")
    limits: dict[str, Limit] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        serial, sep, limit = entry.partition("=")
        if not sep or not serial.strip():
            raise ConfigError(f"limit entry must be SERIAL=RATE[:BURST], got {entry!r}")
        limits[serial.strip()] = parse_limit(limit)
    return limits


def parse_twilio_codes(value: Any) -> tuple[int, ...]:
    """One Twilio error code or several (``21610,30022``): each fault picks one at random."""
    if isinstance(value, str):
        items: list[Any] = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = [value]
    codes = tuple(_integer(item, "twilio code") for item in items)
    if not codes:
        raise ConfigError("twilio-code needs at least one code")
    return codes


def parse_twilio_code(value: Any) -> int:
    return _integer(value, "twilio code")


# --- the configuration
