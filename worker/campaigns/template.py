"""Pure: a campaign's message template, with safe substitution.

``Hi {first_name}, see you {appointment_at:%a %d %b %H:%M}. Reply STOP to opt out.``

A placeholder is a plain name (letters, digits, underscore) of a recipient's
column or a built-in, with an optional strftime format for datetime values,
which are shown in the recipient's zone. ``{{`` and ``}}`` are literal braces.
Operator text is never given to ``str.format``: attribute and index access
(``{x.__class__}``, ``{x[0]}``) and conversions (``{x!r}``) are refused when the
campaign is created, and so is a name that is neither a column nor a built-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from string import Formatter
from zoneinfo import ZoneInfo

from oaksend.errors import ValidationError

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: Names every template may use besides the audience's columns.
BUILTINS = ("phone", "campaign")
MAX_TEMPLATE_CHARS = 10_000
MAX_FORMAT_CHARS = 64


@dataclass(frozen=True)
class Part:
    """A literal run of text, or a placeholder (`name`, with an optional strftime `fmt`)."""

    literal: str
    name: str | None = None
    fmt: str | None = None


@dataclass(frozen=True)
class Template:
    """A parsed template: render it with `render(row, tz)`."""

    text: str
    parts: tuple[Part, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in self.parts if p.name))

    def render(self, values: dict[str, str], tz: ZoneInfo, field_prefix: str = "") -> str:
        """Fill the placeholders from `values` (column -> text). Raises ValidationError naming the column."""
        out: list[str] = []
        for part in self.parts:
            out.append(part.literal)
            if part.name is None:
                continue
            value = values.get(part.name)
            if value is None or not str(value).strip():
                raise ValidationError(f"{field_prefix}{part.name}", "is empty but the template uses it")
            if part.fmt is None:
                out.append(str(value))
                continue
            out.append(_format_time(value, part.fmt, tz, f"{field_prefix}{part.name}"))
        return "".join(out)


def parse(text: str, columns: tuple[str, ...] | list[str], field: str = "template") -> Template:
    """Parse and check a template against the audience's columns; ValidationError when unsafe or unknown."""
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(field, "is empty")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValidationError(field, f"is longer than {MAX_TEMPLATE_CHARS} characters")
    known = set(columns) | set(BUILTINS)
    parts: list[Part] = []
    try:
        pieces = list(Formatter().parse(text))  # parsing only: nothing is looked up or called
    except ValueError as exc:
        raise ValidationError(field, f"has unbalanced braces ({exc}); write {{{{ and }}}} for literal braces") from None
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append(Part(literal))
            continue
        if conversion is not None:
            raise ValidationError(field, f"{{{name}!{conversion}}}: conversions are not allowed")
        if not _NAME_RE.fullmatch(name):
            raise ValidationError(field,
                                  f"{{{name}}}: a placeholder is a plain column name (no dots, brackets or spaces)")
        if "{" in (spec or ""):
            raise ValidationError(field, f"{{{name}:{spec}}}: nested placeholders are not allowed")
        if name not in known:
            raise ValidationError(field,
                                  f"{{{name}}} is not a column of the audience nor a built-in ({', '.join(BUILTINS)})")
        fmt = spec or None
        if fmt is not None and (len(fmt) > MAX_FORMAT_CHARS or "%" not in fmt):
            raise ValidationError(field, f"{{{name}:{fmt}}}: a format is a strftime pattern such as %a %d %b %H:%M")
        parts.append(Part(literal, name, fmt))
    return Template(text, tuple(parts))


def placeholder_names(text: str) -> list[str]:
    """The names a template's placeholders use (none when it does not parse)."""
    try:
        return [name for _, name, _, _ in Formatter().parse(text) if name]
    except ValueError:
        return []


def _format_time(value: str, fmt: str, tz: ZoneInfo, field: str) -> str:
    try:
        return _formatted(str(value).strip(), fmt, tz)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not a datetime, but the template formats it with {fmt!r}") from None


@lru_cache(maxsize=4096)  # appointments fall on a few slots: most rows repeat a recent value
def _formatted(text: str, fmt: str, tz: ZoneInfo) -> str:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(tz).strftime(fmt)


__all__ = ["BUILTINS", "Template", "parse"]
