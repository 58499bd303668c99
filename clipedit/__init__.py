"""clipedit: defend CLIP against typographic attacks by rewriting one layer, and audit models for it.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")
    clipedit.save_edit("ipod-edit.safetensors", defense.edit)
"""
import logging

from .defend import Defense, DefenseConfig, defend, text_exemplars
from .errors import ClipeditError, EditError, ModelLoadError, SiteError
from .models import ModelBundle, list_models, load_model
from .predict import make_predictor
from .rewrite import (EditRequest, LayerEdit, RewriteHParams, apply_edit, apply_rewrite, compute_rewrite,
                      key_statistics, load_edit, revert_edit, save_edit)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["Defense", "DefenseConfig", "defend", "text_exemplars", "ClipeditError", "EditError",
           "ModelLoadError", "SiteError", "ModelBundle", "list_models", "load_model", "make_predictor",
           "EditRequest", "LayerEdit", "RewriteHParams", "apply_edit", "apply_rewrite", "compute_rewrite",
           "key_statistics", "load_edit", "revert_edit", "save_edit"]
