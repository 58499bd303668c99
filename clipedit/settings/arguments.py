"""Argument checks of the public defense API: a wrong type or an empty word is one
``ClipeditError`` (``ArgumentError``), not an AttributeError deep inside."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from clipedit.attacks import Attack
from clipedit.core import EditRequest
from clipedit.errors import ArgumentError, check_argument
from clipedit.eval.evaluation import EvalOptions
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig


def check_defend_arguments(bundle, words, config, exemplars, request, evaluate=False) -> list[str]:
    """``words`` as a list, after checking every argument of ``clipedit.defend``."""
    check_argument(bundle, ModelBundle, "bundle", "defend")
    check_argument(config, (DefenseConfig, Mapping, type(None)), "config", "defend")
    check_argument(request, (EditRequest, type(None)), "request", "defend")
    check_argument(evaluate, (bool, EvalOptions), "evaluate", "defend")
    if isinstance(words, str) or not isinstance(words, Sequence):
        check_argument(words, str, "words", "defend")
        words = [words]
    words = list(words)
    for w in words:
        check_argument(w, str, "each word", "defend")
    if not words or (request is None and exemplars is None and not all(w.strip() for w in words)):
        raise ArgumentError(f"defend: no word to defend against (got {words!r})")
    if exemplars is not None and not all(isinstance(a, Attack) for a in exemplars):
        raise ArgumentError("defend: exemplars must be clipedit.attacks.Attack renders")
    return words
