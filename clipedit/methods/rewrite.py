"""The rank-r rewrite (``edit``; ``edit-any-word`` runs it on any word's exemplars): one edit set that solves
the rewrite core's closed form at each of ``context.sites`` in order (:mod:`clipedit.core.multisite`)."""
from __future__ import annotations

from clipedit.core import RewriteHParams
from clipedit.core.multisite import apply_multisite_rewrite
from clipedit.methods.spec import DefenseData, DefenseResult, MethodContext, budget, fixed_selection, run_meta
from clipedit.models.bundle import ModelBundle
from clipedit.settings.defaults import offline_settings


def run_edit(bundle: ModelBundle, data: DefenseData, hparams: RewriteHParams, context: MethodContext
             ) -> DefenseResult:
    """The rank-r rewrite of ``context.sites`` (one site, or several solved in order): one edit set."""
    edit_set = apply_multisite_rewrite(bundle.model, data.requests, hparams, context.sites, context.statistics,
                                       forward=bundle.encode_images, meta=run_meta(bundle, context), keep=data.keep)
    any_word = context.config.any_word
    offline = offline_settings(bundle, any_word)
    steps = hparams.steps * len(context.sites) if hparams.solver == "optimize" else 0
    details = {"selection": fixed_selection(f"the model's default settings (its default file"
                                            f"{', any_word' if any_word else ''}; chosen offline among "
                                            f"{offline['settings']} settings on validation)"),
               "budget": budget(data.images, steps, 1, offline, train_images=data.images,
                                reference_images=context.config.n_reference,
                                words=len(data.vocabulary.exemplar_words) if data.vocabulary else len(data.words))}
    return DefenseResult("edit", "+".join(context.sites), edit_set=edit_set, details=details)
