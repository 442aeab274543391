"""The one settings object of oaksend, read from the environment (and the file `OAKSEND_ENV_FILE` names).

Every process (producer, worker, dispatcher, CLI) builds a `Settings` once and
passes it explicitly; nothing reads the environment elsewhere.  Units are in
the names (`_s` seconds, `_per_s` per second).
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from oaksend.errors import ConfigError
from oaksend.worker.keys import DEFAULT_PREFIX, Keys, check_prefix
from oaksend.worker.sources import env_file, read_secret

#: Values that look like a key but are only the documentation's placeholder.
_PLACEHOLDER_KEYS = {"", "<your-secret-key>", "your-secret-key", "changeme", "xxx"}

_VERDICTS = {"sent", "retry", "final", "ambiguous"}

#: Slack between a worker's last possible outcome write and the end of its call lease
#: (clock differences between the worker and the dispatcher, a slow commit).
CALL_LEASE_MARGIN_S = 30.0
#: Added to the whole-exchange deadline before a silent worker's marked rows are judged: the mark's
#: lead and window (0.2 s at most) and the error of the clocks' measured offsets.
CALL_WINDOW_MARGIN_S = 2.0


def _env(name: str) -> AliasChoices:
    """Accept both the bare name the README documents and the OAKSEND_ one."""
    return AliasChoices(name, f"OAKSEND_{name}")


class Settings(BaseSettings):
    """oaksend configuration. Field names map to upper-case environment variables."""

    # No `.env` is read unless OAKSEND_ENV_FILE names one (load_settings): a file that happens to be in
    # the working directory (another application's DATABASE_URL) must not configure oaksend.
    model_config = SettingsConfigDict(
        env_file=None, env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # -- stores ---------------------------------------------------------------------------
    #: A file holding the database password (a compose or Kubernetes secret): it goes into
    #: DATABASE_URL, which then names no password. Declared before the URL, whose validator reads it.
    database_password_file: str | None = Field(None, validation_alias=_env("DATABASE_PASSWORD_FILE"))
    database_url: str = Field("sqlite:///oaksend.db", validation_alias=_env("DATABASE_URL"))
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    #: Every Redis key oaksend writes starts with this (see worker/keys.py): two deployments
    #: sharing a Redis database keep apart with a prefix each.
    redis_prefix: str = Field(DEFAULT_PREFIX, validation_alias=_env("REDIS_PREFIX"))
    #: PostgreSQL schema for oaksend's tables (default: the connection's search_path, e.g. public).
    db_schema: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
                                  validation_alias=AliasChoices("OAKSEND_DB_SCHEMA", "DB_SCHEMA"))
    #: PostgreSQL, the send path (workers, dispatcher): longest wait for a new connection, and for
    #: one statement. A database that stalls without an error then fails the write, which is retried
    #: within the call lease; both are counted in it.
    db_connect_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("DB_CONNECT_TIMEOUT_S"))
    db_statement_timeout_s: float = Field(15.0, gt=0, validation_alias=_env("DB_STATEMENT_TIMEOUT_S"))

    # -- the API --------------------------------------------------------------------------
    newoaks_region: Literal["us", "eu"] = Field("us", validation_alias="NEWOAKS_REGION")
    #: Allow an http:// NEWOAKS_BASE_URL on a host that is not loopback (a sandbox in a private
    #: network). Declared before the URL, whose validator reads it.
    allow_insecure_base_url: bool = Field(False, validation_alias=_env("ALLOW_INSECURE_BASE_URL"))
    newoaks_base_url: str | None = Field(None, validation_alias="NEWOAKS_BASE_URL")
    #: A file holding the API key (a compose or Kubernetes secret), read when NEWOAKS_API_KEY is unset.
    newoaks_api_key_file: str | None = Field(None, validation_alias="NEWOAKS_API_KEY_FILE")
    newoaks_api_key: SecretStr | None = Field(None, validation_alias="NEWOAKS_API_KEY")
    connect_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("CONNECT_TIMEOUT_S"))
    read_timeout_s: float = Field(15.0, gt=0, validation_alias=_env("READ_TIMEOUT_S"))

    # -- TLS to the API (proxies come from HTTP_PROXY / HTTPS_PROXY / NO_PROXY) ----------------
    #: A PEM file of CA certificates: the API's certificate is verified against these only.
    ca_bundle: str | None = Field(None, validation_alias=_env("CA_BUNDLE"))
    #: Without a CA bundle: `certifi` (httpx's default: SSL_CERT_FILE / SSL_CERT_DIR when set, else
    #: certifi's bundle) or `system` (the operating system's trust store).
    tls_trust: Literal["certifi", "system"] = Field("certifi", validation_alias=_env("TLS_TRUST"))
    #: A client certificate (PEM) presented to the API; it may hold its key too.
    client_cert: str | None = Field(None, validation_alias=_env("CLIENT_CERT"))
    #: The client certificate's key (PEM, unencrypted), when not in OAKSEND_CLIENT_CERT.
    client_key: str | None = Field(None, validation_alias=_env("CLIENT_KEY"))

    # -- retries, backoff, deadlines ------------------------------------------------------
    max_attempts: int = Field(5, ge=1, validation_alias=_env("MAX_ATTEMPTS"))
    backoff_base_s: float = Field(2.0, gt=0, validation_alias=_env("BACKOFF_BASE_S"))
    backoff_cap_s: float = Field(300.0, gt=0, validation_alias=_env("BACKOFF_CAP_S"))
    retry_later_floor_s: float = Field(300.0, ge=0, validation_alias=_env("RETRY_LATER_FLOOR_S"))
    retry_after_cap_s: float = Field(3600.0, gt=0, validation_alias=_env("RETRY_AFTER_CAP_S"))
    default_deadline_s: float = Field(3 * 3600.0, gt=0, validation_alias=_env("DEFAULT_DEADLINE_S"))
    ambiguous_policy: Literal["retry", "hold"] = Field(
        "retry", validation_alias=_env("AMBIGUOUS_POLICY")
    )
    #: JSON object mapping a Code (envelope Code, HTTP status or Twilio code) to a verdict.
    code_overrides: Annotated[dict[int, str], NoDecode] = Field(default_factory=dict,
                                                                validation_alias=_env("CODE_OVERRIDES"))

    # -- rate limits ----------------------------------------------------------------------
    default_rate_per_s: float = Field(1.0, gt=0, validation_alias=_env("DEFAULT_RATE_PER_S"))
    default_burst: int = Field(1, ge=1, validation_alias=_env("DEFAULT_BURST"))
    #: A worker waits in-process for a rate token at most this long, else it hands the message back.
    max_token_wait_s: float = Field(1.0, ge=0, validation_alias=_env("MAX_TOKEN_WAIT_S"))

    # -- dispatch and leases --------------------------------------------------------------
    lease_s: float = Field(30.0, gt=0, validation_alias=_env("LEASE_S"))
    dispatch_interval_s: float = Field(1.0, gt=0, validation_alias=_env("DISPATCH_INTERVAL_S"))
    dispatch_batch_size: int = Field(50, ge=1, le=1000, validation_alias=_env("DISPATCH_BATCH_SIZE"))
    #: How much work (seconds of each chatbot's rate) may sit in the broker at once.
    dispatch_lookahead_s: float = Field(1.0, gt=0, validation_alias=_env("DISPATCH_LOOKAHEAD_S"))
    #: Upper bound of messages dispatched per chatbot per pass, whatever its rate.
    dispatch_max_per_pass: int = Field(500, ge=1, validation_alias=_env("DISPATCH_MAX_PER_PASS"))
    #: Messages dispatched but not yet claimed, across all chatbots: keeps the broker shallow
    #: when a chatbot's rate is far above what the workers can send.
    max_inflight: int = Field(1000, ge=1, validation_alias=_env("MAX_INFLIGHT"))
    queue_name: str = Field("oaksend", validation_alias=_env("QUEUE_NAME"))

    # -- operations: health, metrics, logs, retention ---------------------------------------
    #: `oaksend health` fails when the active dispatcher's heartbeat is older than this.
    health_dispatcher_max_age_s: float = Field(5.0, gt=0, validation_alias=_env("HEALTH_DISPATCHER_MAX_AGE_S"))
    #: `oaksend health` fails when the oldest due message has waited longer than this.
    health_max_due_age_s: float = Field(300.0, gt=0, validation_alias=_env("HEALTH_MAX_DUE_AGE_S"))
    #: Serve Prometheus metrics on this port (workers and dispatchers; unset: no exporter).
    metrics_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("METRICS_PORT"))
    #: The address the exporter binds (0.0.0.0 inside a container).
    metrics_host: str = Field("127.0.0.1", validation_alias=_env("METRICS_HOST"))
    #: Chatbots that get metrics series of their own (the busiest, plus `other`); 0: none, so the
    #: series stay few however many chatbots there are (per-chatbot figures: `oaksend stats`).
    metrics_chatbots: int = Field(0, ge=0, le=1000, validation_alias=_env("METRICS_CHATBOTS"))
    #: `text` (one line each) or `json` (one object each, for log shippers).
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("LOG_FORMAT"))
    #: Purge terminal messages created more than this many days ago (unset: keep everything).
    retention_days: float | None = Field(None, gt=0, validation_alias=_env("RETENTION_DAYS"))
    #: With retention: blank phone and text instead of deleting the rows.
    retention_anonymize: bool = Field(False, validation_alias=_env("RETENTION_ANONYMIZE"))
    #: How often the dispatcher runs that purge.
    purge_interval_s: float = Field(3600.0, gt=0, validation_alias=_env("PURGE_INTERVAL_S"))
    #: The HMAC key under which idempotency keys are stored (oaksend.models.keyhash); unset: a
    #: fixed, public one. The same on every process; changing it makes stored keys unmatchable.
    key_hash_secret: SecretStr | None = Field(None, validation_alias=_env("KEY_HASH_SECRET"))
    #: Processes that build a large campaign's rows: 0 = one per core (forked), 1 = this process
    #: only (e.g. inside an application whose other threads must not be forked).
    campaign_processes: int = Field(0, ge=0, le=64, validation_alias=_env("CAMPAIGN_PROCESSES"))
    #: The IANA zone of `campaign create` / `preview` when no --tz is given (unset: --tz is required).
    campaign_timezone: str | None = Field(None, max_length=64, validation_alias=_env("CAMPAIGN_TIMEZONE"))
    #: Who runs operator commands, for the audit when `--actor` is not given (unset: the login name).
    actor: str | None = Field(None, max_length=200, validation_alias="OAKSEND_ACTOR")

    # -- the HTTP API (/v1) and status webhooks: docs/api.md, docs/configuration.md -----------------
    api_rate_limit: int = Field(6000, ge=1, validation_alias=_env("API_RATE_LIMIT"))
    api_rate_window_s: int = Field(60, ge=1, le=86400, validation_alias=_env("API_RATE_WINDOW_S"))
    api_max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, validation_alias=_env("API_MAX_BODY_BYTES"))
    webhook_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("WEBHOOK_TIMEOUT_S"))
    webhook_retry_first_s: float = Field(5.0, gt=0, validation_alias=_env("WEBHOOK_RETRY_FIRST_S"))
    webhook_poll_s: float = Field(1.0, gt=0, validation_alias=_env("WEBHOOK_POLL_S"))
    #: At most N campaign messages per chatbot and number within PERIOD, over every campaign
    #: ("2 per 24h"; off by default), checked when written and again when sent (worker/message/cap.py).
    frequency_cap: str | None = Field(None, validation_alias=_env("FREQUENCY_CAP"))

    # -- workers: liveness, outcome writes, the call lease ----------------------------------
    #: A worker process is dead when it has not beaten (every second) for this long: at least
    #: 3 s, so that two late beats in a row are not a death.
    worker_heartbeat_ttl_s: float = Field(3.0, ge=3, validation_alias=_env("WORKER_HEARTBEAT_TTL_S"))
    #: How long a worker keeps retrying to write an outcome while the database is away.
    record_retry_s: float = Field(300.0, gt=0, validation_alias=_env("RECORD_RETRY_S"))
    #: How long a claimed (sending) row stays its worker's. Unset: derived (see `call_lease`).
    call_lease_s: float | None = Field(None, gt=0, validation_alias=_env("CALL_LEASE_S"))
    # -- the dashboard, `oaksend web` (docs/web.md: a header naming the user, from these proxies only) --
    web_proxy_header: str | None = Field(None, max_length=100, validation_alias=_env("WEB_PROXY_HEADER"))
    web_trusted_proxies: str | None = Field(None, validation_alias=_env("WEB_TRUSTED_PROXIES"))
    web_session_ttl_s: float = Field(8 * 3600.0, gt=0, validation_alias=_env("WEB_SESSION_TTL_S"))

    @field_validator("code_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"CODE_OVERRIDES must be a JSON object: {exc.msg}") from None
        if isinstance(value, dict):
            bad = {k: v for k, v in value.items() if str(v).lower() not in _VERDICTS}
            if bad:
                raise ValueError(f"CODE_OVERRIDES verdicts must be one of {sorted(_VERDICTS)}")
            return {int(k): str(v).lower() for k, v in value.items()}
        return value

    @field_validator("frequency_cap", mode="after")
    @classmethod
    def _check_cap(cls, value: str | None) -> str | None:
        from oaksend.errors import ValidationError
        from oaksend.worker.message.cap import parse_cap

        try:
            cap = parse_cap(value, "OAKSEND_FREQUENCY_CAP")
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        return None if cap is None else str(cap)

    @field_validator("redis_prefix", mode="after")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return check_prefix(value)

    @property
    def keys(self) -> Keys:
        """The Redis key names of this deployment."""
        return Keys(self.redis_prefix)

    @field_validator("newoaks_base_url", "db_schema", "metrics_port", "retention_days", "call_lease_s",
                     "ca_bundle", "client_cert", "client_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ca_bundle", "client_cert", "client_key", mode="after")
    @classmethod
    def _a_readable_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked at start, so a typo stops the worker before it claims a message.
        if value is not None and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise ValueError(f"{value!r} is not a readable file")
        if info.field_name == "client_key" and value is not None and info.data.get("client_cert") is None:
            raise ValueError("set OAKSEND_CLIENT_CERT too: a key alone is no client certificate")
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _password_from_file(cls, value: str, info: ValidationInfo) -> str:
        path = info.data.get("database_password_file")
        if not path:
            return value
        from sqlalchemy.engine import make_url

        password = read_secret(path, "OAKSEND_DATABASE_PASSWORD_FILE")
        return make_url(value).set(password=password).render_as_string(hide_password=False)

    @field_validator("newoaks_api_key", mode="after")
    @classmethod
    def _key_from_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        path = info.data.get("newoaks_api_key_file")
        if (value is not None and value.get_secret_value()) or not path:
            return value
        return SecretStr(read_secret(path, "NEWOAKS_API_KEY_FILE"))

    @field_validator("newoaks_base_url", mode="after")
    @classmethod
    def _https_unless_loopback(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The key travels in a header: refuse at start what would send it in cleartext.
        if value is not None:
            from oaksend.worker.newoaks.endpoint import check_base_url

            try:
                check_base_url(value.strip(), allow_insecure=bool(info.data.get("allow_insecure_base_url")))
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("NEWOAKS_BASE_URL: ")) from None
        return value

    # -- derived --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The API base URL: NEWOAKS_BASE_URL when set, else the region's."""
        from oaksend.worker.newoaks.endpoint import base_url_for

        return base_url_for(self.newoaks_region, self.newoaks_base_url,
                            allow_insecure=self.allow_insecure_base_url)

    def __repr_args__(self) -> Any:
        # Settings end up in logs and tracebacks: never with a store's password.
        from oaksend.worker.logs import mask_url

        for name, value in super().__repr_args__():
            masked = name in ("database_url", "redis_url", "newoaks_base_url") and isinstance(value, str)
            yield name, mask_url(value) if masked else value

    def insecure_warnings(self) -> list[str]:
        """What a worker warns of at start: an API base URL without TLS, or the override that allows one."""
        from oaksend.worker.logs import mask_url

        out = []
        if self.base_url.lower().startswith("http://"):
            out.append(f"NEWOAKS_BASE_URL {mask_url(self.base_url)} is not https: the API key and every message "
                       f"travel in cleartext (a sandbox only)")
        if self.allow_insecure_base_url:
            out.append("OAKSEND_ALLOW_INSECURE_BASE_URL is set: an http:// API base URL is accepted off loopback")
        return out

    def secrets(self) -> tuple[str, ...]:
        """Every secret these settings hold (API key, store passwords), for log redaction."""
        from oaksend.worker.logs import url_password

        key = self.newoaks_api_key.get_secret_value() if self.newoaks_api_key else ""
        found = [key.strip(), url_password(self.database_url), url_password(self.redis_url), self.key_secret or ""]
        return tuple(s for s in found if s and len(s) >= 4)

    @property
    def key_secret(self) -> str | None:
        """OAKSEND_KEY_HASH_SECRET's value (None when unset or empty): the key of stored idempotency keys."""
        value = self.key_hash_secret.get_secret_value() if self.key_hash_secret else ""
        return value or None

    @property
    def response_deadline_s(self) -> float:
        """The whole exchange of one call (connect, send, headers, body) ends within this."""
        return self.connect_timeout_s + self.read_timeout_s

    def engine_options(self) -> dict[str, float]:
        """make_engine's bounds for the send path's engines (workers, dispatcher)."""
        return {"connect_timeout_s": self.db_connect_timeout_s, "statement_timeout_s": self.db_statement_timeout_s}

    @property
    def call_window_s(self) -> float:
        """From a message's call mark until its call can no longer be in flight: the mark's lead and
        window, the whole exchange, and a margin for the clocks' measured offsets. Past it, a row
        marked calling whose worker fell silent is judged (an ambiguous attempt, the policy decides)."""
        return self.response_deadline_s + CALL_WINDOW_MARGIN_S

    @property
    def call_lease_floor_s(self) -> float:
        """The shortest call lease that is safe: the wait for a rate slot, the whole
        response, and the outcome's write retries (the last of which may wait for a
        connection and a statement) all fit inside it, with a margin."""
        return (self.max_token_wait_s + self.response_deadline_s + self.record_retry_s
                + self.db_connect_timeout_s + self.db_statement_timeout_s + CALL_LEASE_MARGIN_S)

    @property
    def call_lease(self) -> float:
        """How long a claimed row stays its worker's (seconds)."""
        return self.call_lease_s if self.call_lease_s is not None else self.call_lease_floor_s

    def check_timeouts(self) -> None:
        """Raise ConfigError (naming the settings) when the timeouts do not nest.

        A worker gives up writing an outcome before its call lease ends, so the
        rescue never takes a row whose outcome may still be written (which would
        leave two attempts for one call, or an invented one, or a resend of a
        sent message).
        """
        if self.call_lease_s is not None and self.call_lease_s < self.call_lease_floor_s:
            raise ConfigError(
                f"OAKSEND_CALL_LEASE_S ({self.call_lease_s:g}) must be at least OAKSEND_MAX_TOKEN_WAIT_S + "
                f"OAKSEND_CONNECT_TIMEOUT_S + OAKSEND_READ_TIMEOUT_S + OAKSEND_RECORD_RETRY_S + "
                f"OAKSEND_DB_CONNECT_TIMEOUT_S + OAKSEND_DB_STATEMENT_TIMEOUT_S + "
                f"{CALL_LEASE_MARGIN_S:g} = {self.call_lease_floor_s:g}")
        if self.worker_heartbeat_ttl_s >= self.call_lease:
            raise ConfigError("OAKSEND_WORKER_HEARTBEAT_TTL_S must be shorter than the call lease "
                              "(OAKSEND_CALL_LEASE_S)")

    def api_key(self) -> str:
        """The secret key, checked; raises ConfigError (without the value) when unusable."""
        key = self.newoaks_api_key.get_secret_value() if self.newoaks_api_key else ""
        if key.strip().lower() in _PLACEHOLDER_KEYS:
            raise ConfigError(
                "NEWOAKS_API_KEY is not set: workers need the chatbot account's secret key"
            )
        if key != key.strip():
            raise ConfigError("NEWOAKS_API_KEY has leading or trailing spaces (the API answers 401)")
        return key


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment and the `OAKSEND_ENV_FILE` file (the environment wins),
    turning pydantic's multi-line errors into one ConfigError line."""
    from pydantic import ValidationError as PydanticValidationError

    try:
        # pydantic checks each value (Any: any field, any type, checked there)
        return Settings(**{"_env_file": env_file(), **overrides})
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        message = str(first.get("msg")).removeprefix("Value error, ")
        raise ConfigError(f"{loc.upper()}: {message}") from None
