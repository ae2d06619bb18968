"""What hand-written SQL needs to know of our models: their tables' columns, as the ORM names them.

Used by the fast paths that write events (``sql.py``) and read a replay, so that a renamed
column (``db_column``) or table (``db_table``) reaches the SQL as it reaches the ORM.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Field, Model


def model_field(model: type[Model], name: str) -> tuple[Field[Any, Any], str]:
    """A concrete field of ``model`` and its column, for hand-written SQL."""
    found = model._meta.get_field(name)
    assert isinstance(found, Field) and found.column, name
    return found, found.column
