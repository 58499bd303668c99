"""Exceptions that the CLI turns into one-line errors.

:class:`ClipeditError` is the base of clipedit's. The attack generator (``clipedit.attacks``, which imports
nothing of clipedit's and which ``clipedit.core`` does not load) raises its own ``AttackError``;
clipedit's public functions that render attacks raise it again as :class:`RenderError` (a
``ClipeditError``), and ``clipedit.USER_ERRORS`` catches both where ``attacks`` is called directly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ClipeditError(Exception):
    """An error caused by the user's input or environment; shown without a traceback."""


class ModelLoadError(ClipeditError):
    """A model name, tag or checkpoint that cannot be loaded."""


class SiteError(ClipeditError):
    """A layer that does not exist or cannot be rewritten."""


class EditError(ClipeditError):
    """An edit that cannot be computed, saved or applied."""


class SettingsError(ClipeditError, ValueError):
    """A setting of a settings class (a method's hyperparameters, a defense's configuration) that is of
    the wrong type or out of its declared range."""


class ArgumentError(ClipeditError, TypeError):
    """A public function called with an argument of the wrong type or an empty value."""


class RenderError(ClipeditError, ValueError):
    """An attack that cannot be rendered (an ``attacks.AttackError``, raised again by clipedit's API)."""


def check_argument(value, types, name: str, function: str) -> None:
    """Raise :class:`ArgumentError` unless ``value`` is an instance of ``types`` (a type or a tuple)."""
    if not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ArgumentError(f"{function}: {name} must be a {wanted}, got {type(value).__name__}")


@contextlib.contextmanager
def render_errors() -> Iterator[None]:
    """Raise an ``attacks.AttackError`` from the block again as :class:`RenderError` (same message)."""
    from clipedit.attacks.errors import AttackError

    try:
        yield
    except AttackError as e:
        raise RenderError(str(e)) from e
