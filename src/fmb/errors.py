"""fmb's own exceptions: each says what is wrong in words a user can act on.

The CLI prints them as one line (no traceback); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FmbError(Exception):
    """Base of all user-facing errors."""


class ConfigError(FmbError):
    """A configuration value is missing, malformed, or comes from an unreadable file."""


class DataError(FmbError):
    """Input data violate the row contract; names the object and the field when known."""

    def __init__(self, message: str, *, object_id: int | None = None, field: str | None = None):
        self.object_id = object_id
        self.field = field
        self.reason = message
        where = []
        if object_id is not None:
            where.append(f"object {object_id}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
