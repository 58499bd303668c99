"""The errors of bad input (the package's own: it depends on nothing above it).

``ClipeditError`` is defined here, in the lowest package, so that :class:`AttackError` can be one
without ``attacks`` importing ``clipedit``; ``clipedit.errors`` re-exports it as the base of all of
clipedit's one-line errors.
"""
from __future__ import annotations


class ClipeditError(Exception):
    """An error caused by the user's input or environment; shown without a traceback."""


class AttackError(ClipeditError, ValueError):
    """A text, font, style or image that cannot be turned into an attack."""
