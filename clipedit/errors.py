"""Exceptions that the CLI turns into one-line errors (with ``attacks.AttackError``)."""


class ClipeditError(Exception):
    """An error caused by the user's input or environment; shown without a traceback."""


class ModelLoadError(ClipeditError):
    """A model name, tag or checkpoint that cannot be loaded."""


class SiteError(ClipeditError):
    """A layer that does not exist or cannot be rewritten."""


class EditError(ClipeditError):
    """An edit that cannot be computed, saved or applied."""
