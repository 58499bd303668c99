"""Defend a CLIP model against written words: build exemplars, run the chosen method, report the effect.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")          # edits bundle.model in place
    defense.save("ipod.safetensors")                   # the edit set (one site, or the model's default sites)

One path: :func:`~clipedit.settings.resolve.resolve_config` fills the settings from the model's default file,
the exemplars become :class:`~clipedit.methods.spec.DefenseData`, the method table runs the method
(:func:`~clipedit.methods.registry.run_defense`), and the edit is an
:class:`~clipedit.core.edit_sets.EditSet`. ``defend(bundle, "*")`` defends against any written word:
exemplars rendered from a broad vocabulary (:mod:`clipedit.methods.any_word`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

from clipedit.attacks import Attack
from clipedit.core import EditRequest, KeepRequest
from clipedit.data.prepare.exemplars import (
    N_SIGNS,
    keep_request_from_attacks,
    reference_statistics,
    request_from_attacks,
    sign_exemplars,
    text_exemplars,
    world_of,
)
from clipedit.data.prepare.vocabulary import ANY_WORD
from clipedit.errors import ArgumentError, check_argument, render_errors
from clipedit.eval.evaluation import EvalOptions, Evaluation
from clipedit.eval.timing import StageTimer
from clipedit.methods.any_word import any_word_data, evaluation_words
from clipedit.methods.registry import method_spec, run_defense
from clipedit.methods.spec import DefenseData, DefenseResult
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)

__all__ = ["DefenseConfig", "DefenseResult", "defend", "defense_data", "reference_statistics",
           "text_exemplars", "world_of"]


@render_errors()  # an attack that cannot be rendered is a ClipeditError here, one line at the CLI
def defend(bundle: ModelBundle, words: str | Sequence[str] = "ipod",
           config: Optional[DefenseConfig | dict] = None, exemplars: Optional[Sequence[Attack]] = None,
           request: Optional[EditRequest] = None, evaluate: bool | EvalOptions = False,
           timer: Optional[StageTimer] = None) -> DefenseResult:
    """Make ``bundle.model`` ignore the written ``words``, in place.

    Args:
        bundle: the model to defend (edited in place).
        words: the word(s) to defend against; several words make one joint edit; ``"*"``: any word
            (exemplars from a broad vocabulary, :mod:`clipedit.methods.any_word`).
        config: method, layer, rank, renders … (a DefenseConfig or a dict of overrides, see
            :func:`~clipedit.settings.resolve.resolve_config`); the rest from the model's defaults.
        exemplars: rendered attacks to use instead of generating ``config.renders`` per word.
        request: a ready ``EditRequest`` (e.g. a real photo pair) instead of rendered exemplars.
        evaluate: ``True`` or :class:`~clipedit.eval.evaluation.EvalOptions`: the CLI's before/after
            figures on the same held-out sets, in ``result.figures`` (``"*"``: words held out of its
            vocabulary).
        timer: laps this call's stages (``result.stages``: seconds per stage); a caller's timer keeps its
            own laps before them and says each stage's opening line where it says (the CLI: stderr).
    """
    words = _check_arguments(bundle, words, config, exemplars, request, evaluate)
    config = resolve_config(bundle, config, any_word=words == [ANY_WORD] and request is None and exemplars is None)
    if config.any_word:
        words = [ANY_WORD]  # a method that is the rewrite against any word defends against any word
    timer = timer if timer is not None else StageTimer()
    evaluation = None
    if evaluate is not False:
        options = evaluate if isinstance(evaluate, EvalOptions) else EvalOptions()
        evaluation = Evaluation.of(bundle, evaluation_words(bundle, config) if config.any_word else words, options)
        timer.lap("evaluation_sets")
        timer.announce(f"evaluating {bundle.name} before the {config.method} …")
        before = evaluation(bundle)
        timer.lap("evaluate_before")
        # the stage after "evaluating … before" (without an evaluation, a bad input stays one line)
        timer.announce(f"{config.method} of {bundle.name} against {', '.join(words)} …")
    data = defense_data(bundle, words, config, exemplars, request)
    result = run_defense(bundle, data, config, lambda layer: reference_statistics(bundle, layer, config))
    timer.lap("defend")
    if evaluation is not None:
        timer.announce(f"evaluating {bundle.name} after the {config.method} …")
        after = evaluation(bundle)
        timer.lap("evaluate_after")
        result.figures = {"before": before, "after": after, "dataset": evaluation.sets.dataset,
                          "classnames": list(evaluation.sets.classnames),
                          "templates": evaluation.predictor.templates, "sets": evaluation.sets}
    result.stages = timer.seconds()
    return result


def _check_arguments(bundle, words, config, exemplars, request, evaluate=False) -> list[str]:
    """``words`` as a list, after checking every argument of :func:`defend`: a wrong type or an empty word is
    one ``ClipeditError`` (``ArgumentError``), not an AttributeError deep inside."""
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


def defense_data(bundle: ModelBundle, words: list[str], config: DefenseConfig,
                 exemplars: Optional[Sequence[Attack]] = None, request: Optional[EditRequest] = None) -> DefenseData:
    """The exemplars of a defense (resolved ``config``): a given request, given attacks, ``"*"``'s
    vocabulary renders, or ``config.renders`` renders of each word; none for a method that draws its own
    training split (``MethodSpec.exemplars`` False); with the rewrite's ``keep_reading``, the signs it keeps
    (:func:`sign_requests`)."""
    spec = method_spec(config.method)
    if request is not None:
        data = DefenseData.of(words, request)
    elif config.any_word:
        data = any_word_data(bundle, config)
    elif not spec.exemplars and exemplars is None:
        data = DefenseData(list(words), lambda: [], n_images=0)
    else:
        if exemplars is None:
            exemplars = [a for w in words
                         for a in text_exemplars(bundle, w, config.renders, config.seed, config.photos)]
        exemplars = list(exemplars)
        req = request_from_attacks(bundle.preprocess, exemplars, use_text_mask=config.mask == "text")
        data = DefenseData.of(words, req, exemplars)
    if getattr(config.hparams, "keep_reading", 0) > 0:  # the rewrite keeps reading
        data.keep = sign_requests(bundle, config)
    return data


def sign_requests(bundle: ModelBundle, config: DefenseConfig) -> Callable[[], list[KeepRequest]]:
    """The signs a ``keep_reading`` rewrite keeps (:func:`~clipedit.data.prepare.exemplars.sign_exemplars`, at the
    same mask as the exemplars: glyphs or whole label), rendered once and handed to every site."""
    signs = sign_exemplars(bundle, N_SIGNS, config.seed, config.photos)
    request = keep_request_from_attacks(bundle.preprocess, signs, use_text_mask=config.mask == "text")
    return lambda: [request]
