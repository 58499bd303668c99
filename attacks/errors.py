"""The error raised for attacks that cannot be rendered."""
from __future__ import annotations

from clipedit.errors import ClipeditError


class AttackError(ClipeditError, ValueError):
    """A text, font, style or image that cannot be turned into an attack."""
