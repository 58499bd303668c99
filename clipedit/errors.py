"""Exceptions that the CLI turns into one-line errors.

:class:`ClipeditError` is the base of every one of them, ``attacks.AttackError`` included: it is
defined in ``attacks.errors`` (the package below clipedit, which imports nothing of clipedit's) and
re-exported here.
"""
from attacks.errors import AttackError, ClipeditError

__all__ = ["ArgumentError", "AttackError", "ClipeditError", "EditError", "ModelLoadError", "SiteError",
           "check_argument"]


class ModelLoadError(ClipeditError):
    """A model name, tag or checkpoint that cannot be loaded."""


class SiteError(ClipeditError):
    """A layer that does not exist or cannot be rewritten."""


class EditError(ClipeditError):
    """An edit that cannot be computed, saved or applied."""


class ArgumentError(ClipeditError, TypeError):
    """A public function called with an argument of the wrong type or an empty value."""


def check_argument(value, types, name: str, function: str) -> None:
    """Raise :class:`ArgumentError` unless ``value`` is an instance of ``types`` (a type or a tuple)."""
    if not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ArgumentError(f"{function}: {name} must be a {wanted}, got {type(value).__name__}")
