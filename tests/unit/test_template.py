"""Templates: safe substitution, unknown names refused at creation, datetimes in the recipient's zone."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.template import parse

COLUMNS = ["phone", "first_name", "appointment_at"]
NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("Hi {first_name}!", {"first_name": "Ann"}, "Hi Ann!"),
        ("{first_name}, see you {appointment_at:%a %d %b %H:%M}",
         {"first_name": "Bob", "appointment_at": "2026-12-01T10:30"}, "Bob, see you Tue 01 Dec 10:30"),
        # an aware value is shown in the recipient's zone
        ("{appointment_at:%H:%M %Z}", {"appointment_at": "2026-12-01T15:30:00+00:00"}, "10:30 EST"),
        ("{appointment_at:%H:%M %Z}", {"appointment_at": "2026-07-01T15:30:00+00:00"}, "11:30 EDT"),
        ("{{literal}} {first_name}", {"first_name": "Cy"}, "{literal} Cy"),
        # a value is inserted as text, never interpreted again
        ("Hi {first_name}", {"first_name": "{appointment_at.__class__}"}, "Hi {appointment_at.__class__}"),
        ("To {phone} from {campaign}", {"phone": "+14155550123", "campaign": "Flu shots"},
         "To +14155550123 from Flu shots"),
        ("No placeholders", {}, "No placeholders"),
    ],
)
def test_render(text: str, values: dict[str, str], expected: str) -> None:
    assert parse(text, COLUMNS).render(values, NY) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Hi {first_name.__class__}", "a placeholder is a plain column name"),
        ("Hi {first_name[0]}", "a placeholder is a plain column name"),
        ("Hi {0}", "a placeholder is a plain column name"),
        ("Hi {}", "a placeholder is a plain column name"),
        ("Hi {first_name!r}", "conversions are not allowed"),
        ("Hi {last_name}", "{last_name} is not a column of the audience"),
        ("Hi {first_name", "unbalanced braces"),
        ("Hi first_name}", "unbalanced braces"),
        ("{appointment_at:{first_name}}", "nested placeholders"),
        ("{appointment_at:>10}", "a format is a strftime pattern"),
        ("   ", "is empty"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match="^template: .*" + message.replace("[", "\\[").replace("{", "\\{")
                       .replace("}", "\\}")):
        parse(text, COLUMNS)


def test_names_in_order_once() -> None:
    t = parse("{first_name} {appointment_at:%H} {first_name}", COLUMNS)
    assert t.names == ("first_name", "appointment_at")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"first_name": ""}, "first_name: is empty but the template uses it"),
        ({"first_name": "  "}, "first_name: is empty"),
        ({"first_name": "Ann", "appointment_at": "soon"}, "appointment_at: 'soon' is not a datetime"),
    ],
)
def test_render_names_the_column(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match="^row 4, column " + message):
        parse("{first_name} {appointment_at:%H:%M}", COLUMNS).render(
            {"appointment_at": "2026-12-01T10:00", **values}, NY, "row 4, column ")
