"""The error raised for attacks that cannot be rendered (the package's own: it depends on nothing above it)."""
from __future__ import annotations


class AttackError(ValueError):
    """A text, font, style or image that cannot be turned into an attack."""
