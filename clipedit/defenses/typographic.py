"""Defend a CLIP model against written words: build exemplars, rewrite one layer, report the effect.

The settings and result types live in :mod:`clipedit.defenses.config`, exemplars and reference
statistics in :mod:`clipedit.defenses.exemplars` (both re-exported here).

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")          # edits bundle.model in place
    defense.save("ipod.safetensors")                   # the edit (or the edit set of a multi-site default)

``defend(bundle, "*")`` defends against any written word: exemplars rendered from a broad vocabulary
(:mod:`clipedit.defenses.vocabulary`), optionally edited over several sites (``DefenseConfig.sites``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from attacks import Attack
from clipedit.core import EditRequest
from clipedit.defenses.any_word import defend_any_word
from clipedit.defenses.arguments import check_defend_arguments
from clipedit.defenses.config import Defense, DefenseConfig
from clipedit.defenses.edit_requests import request_from_attacks
from clipedit.defenses.exemplars import reference_statistics, text_exemplars, world_of
from clipedit.defenses.methods import run_method, run_multisite_edit
from clipedit.defenses.vocabulary import ANY_WORD
from clipedit.errors import ClipeditError, render_errors
from clipedit.models.bundle import ModelBundle

__all__ = ["Defense", "DefenseConfig", "defend", "reference_statistics", "text_exemplars", "world_of"]


@render_errors()  # an attack that cannot be rendered is a ClipeditError here (issue 21)
def defend(bundle: ModelBundle, words: str | Sequence[str] = "ipod", config: Optional[DefenseConfig] = None,
           exemplars: Optional[Sequence[Attack]] = None, request: Optional[EditRequest] = None) -> Defense:
    """Make ``bundle.model`` ignore the written ``words``, in place.

    Args:
        bundle: the model to defend (edited in place).
        words: the word(s) to defend against; several words make one joint edit; ``"*"``: any word
            (exemplars from a broad vocabulary, :mod:`clipedit.defenses.any_word`).
        config: method, layer, rank, renders …
        exemplars: rendered attacks to use instead of generating ``config.renders`` per word.
        request: a ready ``EditRequest`` (e.g. a real photo pair) instead of rendered exemplars.
    """
    words = check_defend_arguments(bundle, words, config, exemplars, request)
    if words == [ANY_WORD] and request is None and exemplars is None:
        return defend_any_word(bundle, config or DefenseConfig())
    config = (config or DefenseConfig()).resolved(bundle)
    if request is None:
        if exemplars is None:
            if not words:
                raise ClipeditError("no words to defend against")
            exemplars = [a for w in words
                         for a in text_exemplars(bundle, w, config.renders, config.seed, config.photos)]
        request = request_from_attacks(bundle.preprocess, exemplars, use_text_mask=config.mask == "text")
    statistics = lambda layer: reference_statistics(bundle, layer, config)  # noqa: E731
    if config.method == "edit" and config.sites:  # one edit over several sites, solved in order
        result = run_multisite_edit(bundle, lambda: [request], config.hparams, config.sites, statistics,
                                    {"words": words})
    else:
        result = run_method(bundle, request, config.method, config.hparams, config.finetune, statistics,
                            {"words": words})
    return Defense(layer=result.layer, method=result.method, words=words, edit=result.edit,
                   exemplars=list(exemplars or []), edit_set=result.edit_set, details=result.details)

