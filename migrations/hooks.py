"""Autogenerate hooks shared by env.py and the migration tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime

from oaksend.models.tables import UTCDateTime


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Migrations spell the portable column type, not our Python-side decorator."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def compare_type(ctx: Any, inspected: Any, metadata_column: Any, inspected_type: Any,
                 metadata_type: Any) -> bool | None:
    """A UTCDateTime column matches any DATETIME/TIMESTAMP in the database."""
    if isinstance(metadata_type, UTCDateTime):
        return not isinstance(inspected_type, DateTime)
    return None


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Autogenerate looks only at oaksend's own tables: the application's are not ours to drop."""
    if type_ == "table":
        from oaksend.models.tables import PREFIX, VERSION_TABLE

        return bool(name and name.startswith(PREFIX) and name != VERSION_TABLE)
    return True
