"""The sandbox's configuration: one frozen dataclass and its parsers.

Flags, ``SANDBOX_*`` environment variables and the runtime
``POST /_sandbox/config`` body all go through the same per-field parsers, so
the three ways of configuring the fake cannot drift apart. Precedence at start:
flag, then environment variable, then the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oaksend.sandbox.exceptions import ConfigError
from oaksend.sandbox.values import (
    Latency,
    Limit,
    parse_latency,
    parse_limits,
    parse_log_level,
    parse_non_negative,
    parse_optional_limit,
    parse_optional_str,
    parse_port,
    parse_probability,
    parse_retry_after,
    parse_seed,
    parse_str,
    parse_twilio_code,
    parse_twilio_codes,
)

ENV_PREFIX = "SANDBOX_"
#: The key when none is given (--api-key / SANDBOX_API_KEY; never NEWOAKS_API_KEY, which may be a real
#: key): accepted on loopback only, since anyone who can reach the sandbox knows it.
DEFAULT_API_KEY = "sandbox-key"

#: random faults, in the order their probability bands are laid out on [0, 1)
PROBABILITY_FIELDS = (
    "p_429",
    "p_500",
    "p_502",
    "p_503",
    "p_504",
    "p_code_500",
    "p_status_false",
    "p_twilio_error",
    "p_hang",
    "p_reset",
    "p_malformed",
)

#: settings bound to the listening socket or the process, not changeable at runtime
STARTUP_ONLY = frozenset({"host", "port", "log_level"})


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the fake API does: where it listens, what it accepts, which faults it injects."""

    host: str = "127.0.0.1"
    port: int = 8099  #: 0 picks a free port
    api_key: str = field(default=DEFAULT_API_KEY, repr=False)  # never in a repr, a log or a record
    seed: int | None = None  #: None draws a fresh seed
    latency: Latency = Latency()
    p_429: float = 0.0
    retry_after: int = 1  #: seconds in Retry-After of random and scripted 429s; < 0 omits it
    burst_429_every: float = 0.0  #: seconds between the starts of 429 bursts; 0 disables
    burst_429_for: float = 0.0  #: seconds each burst lasts
    p_500: float = 0.0
    p_502: float = 0.0
    p_503: float = 0.0
    p_504: float = 0.0
    p_code_500: float = 0.0
    p_status_false: float = 0.0
    status_false_code: int = 30003  #: Twilio code quoted in Data.Message of a Status "False"
    p_twilio_error: float = 0.0
    twilio_code: tuple[int, ...] = (21610,)
    p_hang: float = 0.0
    hang_s: float = 30.0
    p_reset: float = 0.0
    p_malformed: float = 0.0
    limits: Mapping[str, Limit] = field(default_factory=dict)
    default_limit: Limit | None = None
    limit_slack_ms: float = 0.0  #: early arrival forgiven by the limiter (network jitter)
    record_file: str | None = None  #: JSON lines written on exit
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        total = sum(getattr(self, name) for name in PROBABILITY_FIELDS)
        if total > 1.0 + 1e-9:
            raise ConfigError(
                f"fault probabilities add up to {total:g} > 1: they are exclusive bands of one draw"
            )
        if self.burst_429_every and self.burst_429_for > self.burst_429_every:
            raise ConfigError("burst-429-for must not exceed burst-429-every")
        if not self.twilio_code:
            raise ConfigError("twilio-code needs at least one code")
        if not self.api_key:
            raise ConfigError("api-key must not be empty")

    def limit_for(self, serial: str) -> Limit | None:
        """The configured limit of a chatbot, else the default limit."""
        return self.limits.get(serial, self.default_limit)

    def updated(self, changes: Mapping[str, Any]) -> Config:
        """A copy with runtime ``changes`` (flag names; dashes or underscores) applied and validated."""
        values: dict[str, Any] = {}
        for raw_name, raw_value in changes.items():
            name = normalize_name(raw_name)
            if name not in FIELDS:
                raise ConfigError(f"unknown setting {raw_name!r}")
            if name in STARTUP_ONLY:
                raise ConfigError(f"{raw_name!r} cannot change at runtime")
            values[name] = FIELDS[name].parse(raw_value)
        return dataclasses.replace(self, **values)

    def public_dict(self) -> dict[str, Any]:
        """The configuration as JSON, without the API key."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "api_key":
                continue
            value = getattr(self, f.name)
            if isinstance(value, (Latency, Limit)):
                value = str(value)
            elif f.name == "limits":
                value = {serial: str(limit) for serial, limit in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one setting is read from a flag, an environment variable and runtime JSON."""

    name: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


_SPECS = [
    FieldSpec("host", parse_str, "address to listen on (default 127.0.0.1)"),
    FieldSpec("port", parse_port, "port to listen on; 0 picks a free one (default 8099)"),
    FieldSpec("api_key", parse_str,
              f"accepted Authorization value, and X-Sandbox-Key of the control endpoints (default "
              f"{DEFAULT_API_KEY}, on a loopback host only)", "KEY"),
    FieldSpec("seed", parse_seed, "seed of the fault random source (default: fresh)", "INT"),
    FieldSpec("latency", parse_latency, "added delay in ms: 20, uniform:10,50, normal:30,10, exp:20", "SPEC"),
    FieldSpec("p_429", parse_probability, "probability of HTTP 429", "P"),
    FieldSpec("retry_after", parse_retry_after, "Retry-After seconds of 429s; negative omits the header (default 1)",
              "S"),
    FieldSpec("burst_429_every", parse_non_negative, "every S seconds start a burst of 429s (0: never)", "S"),
    FieldSpec("burst_429_for", parse_non_negative, "length of each 429 burst in seconds", "S"),
    FieldSpec("p_500", parse_probability, "probability of HTTP 500", "P"),
    FieldSpec("p_502", parse_probability, "probability of HTTP 502 (HTML body)", "P"),
    FieldSpec("p_503", parse_probability, "probability of HTTP 503", "P"),
    FieldSpec("p_504", parse_probability, "probability of HTTP 504 (HTML body)", "P"),
    FieldSpec("p_code_500", parse_probability, "probability of HTTP 200 with envelope Code 500", "P"),
    FieldSpec("p_status_false", parse_probability, "probability of HTTP 200, Code 200, Data.Status \"False\"", "P"),
    FieldSpec("status_false_code", parse_twilio_code, "Twilio code quoted by Status \"False\" (default 30003)", "CODE"),
    FieldSpec("p_twilio_error", parse_probability, "probability of HTTP 200, Code 400, a Twilio error Message", "P"),
    FieldSpec("twilio_code", parse_twilio_codes, "Twilio error code(s) for --p-twilio-error, e.g. 21610,30022",
              "CODES"),
    FieldSpec("p_hang", parse_probability, "probability of never answering (for --hang-s, then close)", "P"),
    FieldSpec("hang_s", parse_non_negative,
              "seconds a hung request is held before the connection closes (default 30)", "S"),
    FieldSpec("p_reset", parse_probability, "probability of resetting the connection without an answer", "P"),
    FieldSpec("p_malformed", parse_probability, "probability of HTTP 200 with a malformed body", "P"),
    FieldSpec("limits", parse_limits,
              "per-chatbot limit SERIAL=RATE[:BURST], repeatable (env SANDBOX_LIMITS=SN1=5:1,SN2=20:2)",
              "SERIAL=RATE[:BURST]"),
    FieldSpec("default_limit", parse_optional_limit, "limit of chatbots without their own --limit", "RATE[:BURST]"),
    FieldSpec("limit_slack_ms", parse_non_negative,
              "how early (ms) a request may come before the limiter counts it a violation (default 0)", "MS"),
    FieldSpec("record_file", parse_optional_str, "write the request records here as JSON lines on exit", "PATH"),
    FieldSpec("log_level", parse_log_level, "DEBUG logs each request with masked numbers (default INFO)", "LEVEL"),
]
FIELDS: dict[str, FieldSpec] = {spec.name: spec for spec in _SPECS}


def normalize_name(name: str) -> str:
    """``--p-503``, ``p-503``, ``P_503``, ``SANDBOX_P_503`` and ``limit`` all name their field."""
    key = name.strip().lstrip("-").lower().replace("-", "_")
    key = key.removeprefix(ENV_PREFIX.lower())
    return "limits" if key == "limit" else key


def _argtype(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    """Makes argparse print the parser's own message instead of a generic one."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = parse.__name__
    return convert


def build_parser(prog: str = "oaksend sandbox") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fake NewOaks SendTwilioMessage API with fault injection. "
        f"Every flag also reads {ENV_PREFIX}<FLAG_NAME> from the environment; flags win.",
    )
    for spec in _SPECS:
        if spec.name == "limits":
            # Repeatable and kept as text: the entries are merged after parsing.
            parser.add_argument("--limit", dest="limits", action="append", metavar=spec.metavar, help=spec.help)
        else:
            parser.add_argument(spec.flag, type=_argtype(spec.parse), metavar=spec.metavar, help=spec.help)
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration from flags over environment over defaults.

    Raises :class:`ConfigError` for an invalid value; argparse exits on a bad flag.
    """
    env = os.environ if environ is None else environ
    namespace = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for spec in _SPECS:
        flag_value = getattr(namespace, spec.name)
        env_value = env.get(spec.env) or None
        try:
            if flag_value is not None:
                values[spec.name] = parse_limits(flag_value) if spec.name == "limits" else flag_value
            elif env_value is not None:
                values[spec.name] = spec.parse(env_value)
        except ConfigError as exc:
            raise ConfigError(f"{spec.env}: {exc}") from exc
    if "api_key" not in values and not _is_loopback(values.get("host", "127.0.0.1")):
        raise ConfigError(f"--host {values['host']} is not loopback: give the sandbox its own key (--api-key or "
                          f"{ENV_PREFIX}API_KEY); with the default one anyone who reaches it could read its records")
    return Config(**values)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
