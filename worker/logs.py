"""Logging that is safe to ship: phone numbers masked, the API key never written.

`configure_logging(settings)` installs a filter on the root handlers that masks
anything shaped like a phone number and replaces the key if it ever appears.
"""

from __future__ import annotations

import logging
import re

#: E.164 numbers, which is how oaksend stores and logs every number.
_PHONE_RE = re.compile(r"\+[1-9]\d{6,14}(?!\d)")


def mask_phone(phone: str) -> str:
    """+14155550123 -> +1415****123: enough to tell numbers apart, not to dial one."""
    digits = phone.lstrip("+")
    if len(digits) <= 6:
        return "+" + "*" * len(digits)
    # Hide at least four digits whatever the length (E.164 numbers can be 7 digits long).
    tail = 3 if len(digits) >= 10 else 2
    head = max(1, min(4, len(digits) - tail - 4))
    return f"+{digits[:head]}{'*' * (len(digits) - head - tail)}{digits[-tail:]}"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask phone numbers and remove the given secrets from a line of text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Rewrites every record's message: phone numbers masked, secrets removed."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
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


def configure_logging(level: str = "INFO", secrets: tuple[str, ...] = ()) -> None:
    """Plain one-line logs on stderr with redaction installed."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_redaction(secrets)
