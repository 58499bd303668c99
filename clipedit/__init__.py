"""clipedit: defend CLIP against typographic attacks by rewriting one layer, and audit models for it.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")
    clipedit.save_edit("ipod-edit.safetensors", defense.edit)

Layers, lowest first (each imports only from those before it): ``errors``/``io``, ``core`` (the
rewrite, independent of CLIP), ``data``, ``mini`` (the generated world), ``models``, ``eval``,
``defenses``, ``commands``. The attack generator is the separate package ``attacks``.
"""
import logging

from attacks import AttackError
from clipedit.core import (
                           EditRequest,
                           LayerEdit,
                           RewriteHParams,
                           apply_edit,
                           apply_rewrite,
                           compute_rewrite,
                           key_statistics,
                           load_edit,
                           revert_edit,
                           save_edit,
)
from clipedit.defenses.defaults import defaults_for
from clipedit.defenses.typographic import Defense, DefenseConfig, defend, text_exemplars
from clipedit.errors import ArgumentError, ClipeditError, EditError, ModelLoadError, RenderError, SiteError
from clipedit.eval.predictor import make_predictor
from clipedit.models import ModelBundle, list_models, load_model

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Every one-line error of clipedit and of the attack generator beneath it: ``except clipedit.USER_ERRORS``.
USER_ERRORS = (ClipeditError, AttackError)

__all__ = ["USER_ERRORS", "ArgumentError", "AttackError", "ClipeditError", "Defense", "DefenseConfig", "EditError",
           "EditRequest", "LayerEdit", "ModelBundle", "ModelLoadError", "RenderError", "RewriteHParams",
           "SiteError", "apply_edit", "apply_rewrite", "compute_rewrite", "defaults_for", "defend",
           "key_statistics", "list_models", "load_edit", "load_model", "make_predictor", "revert_edit",
           "save_edit", "text_exemplars"]
