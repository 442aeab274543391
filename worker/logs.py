"""Logging that is safe to ship: phone numbers masked, the API key and passwords never written.

`configure_logging(level, secrets)` installs a filter on the root handlers that masks
anything shaped like a phone number, the password of any URL (`scheme://user:***@host`)
or `password=` parameter, and replaces the given secrets (the API key, the stores'
passwords: `Settings.secrets()`) wherever they appear. `redact` does the same to any
line of text, e.g. an error message about to be printed.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit

#: E.164 numbers, which is how oaksend stores and logs every number.
_PHONE_RE = re.compile(r"\+[1-9]\d{6,14}(?!\d)")
#: The password of a URL: scheme://user:PASSWORD@host. Greedy up to the last "@" of the
#: word, so that an unencoded "@" in a password is masked too (over-masking is the safe side).
_URL_PASSWORD_RE = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s]*)(@)")
#: password=... in a query string or a libpq conninfo (quoted or not).
_PASSWORD_PARAM_RE = re.compile(r"((?:\b|_)(?:password|passwd|pwd)\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,]+)",
                                re.IGNORECASE)
_MASK = "***"


def mask_url(url: str) -> str:
    """postgresql://app:s3cret@db/app -> postgresql://app:***@db/app (also ?password=...)."""
    return _PASSWORD_PARAM_RE.sub(rf"\1{_MASK}", _URL_PASSWORD_RE.sub(rf"\1{_MASK}\3", url))


def url_password(url: str) -> str | None:
    """The password a URL holds (decoded), if any: a secret to redact wherever it appears."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password is None:
        match = _PASSWORD_PARAM_RE.search(parts.query or "")
        password = match.group(2).strip("'\"") if match else None
    return unquote(password) if password else None


def mask_phone(phone: str) -> str:
    """+14155550123 -> +1415****123: enough to tell numbers apart, not to dial one."""
    digits = phone.lstrip("+")
    if len(digits) <= 6:
        return "+" + "*" * len(digits)
    # Hide at least four digits whatever the length (E.164 numbers can be 7 digits long).
    tail = 3 if len(digits) >= 10 else 2
    head = max(1, min(4, len(digits) - tail - 4))
    return f"+{digits[:head]}{'*' * (len(digits) - head - tail)}{digits[-tail:]}"


def mask_key(key: str) -> str:
    """A recipient key as logs show it: a phone number masked, anything else (a name, an email, a patient
    id) as a short digest (`key#1a2b3c4d5e`): enough to tell recipients apart, not to read who they are."""
    import hashlib

    if _PHONE_RE.fullmatch(key):
        return mask_phone(key)
    return "key#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask phone numbers and URL passwords, and remove the given secrets, from a line of text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    if "=" in text or "://" in text:
        text = mask_url(text)
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Rewrites every record's message: phone numbers masked, secrets removed."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        return True


def install_redaction(secrets: tuple[str, ...] = ()) -> None:
    """Attach the redacting filter to every handler of the root logger (and future ones via root)."""
    flt = RedactingFilter(secrets)
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)


#: The fields a log record may carry beyond its message (`extra=send_fields(...)`); nothing else is shipped.
FIELDS = ("message_id", "chatbot", "to", "verdict", "attempt")


def send_fields(message_id: int, chatbot: str, to_phone: str, verdict: object,
                attempt: int | None) -> dict[str, object]:
    """The structured fields of a send's log line: the number masked, never the text or the key."""
    return {"message_id": message_id, "chatbot": chatbot, "to": mask_phone(to_phone),
            "verdict": str(getattr(verdict, "value", verdict)), "attempt": attempt}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, and the send fields when present.

    Runs after the redacting filter, so `msg` is already masked; `to` is masked again here.
    """

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = redact(str(value)) if name == "to" else value
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", secrets: tuple[str, ...] = (), fmt: str = "text") -> None:
    """One-line logs on stderr (`text`, or `json` objects) with redaction installed."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    install_redaction(secrets)
