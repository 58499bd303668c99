"""clipedit: defend CLIP against typographic attacks by rewriting one layer, and audit models for it.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod", evaluate=clipedit.EvalOptions(n=200))
    print(defense.figures["before"]["text_acc"], defense.figures["after"]["text_acc"])
    clipedit.save_edits("ipod-edit.safetensors", defense.edit_set)

Layers, lowest first (each imports only from those before it): ``errors``/``io``, ``core`` (the
rewrite, independent of CLIP), ``data``, ``mini`` (the generated world), ``models``, ``eval``,
``defenses``, ``commands``. The attack generator is the separate package ``attacks/`` of the repository,
installed as ``clipedit.attacks`` by the package-dir mapping of ``pyproject.toml`` (a wheel and an editable
install alike; clipedit runs installed, as its bundled minis are package data too). It imports nothing
from clipedit.
"""
import logging

from clipedit.attacks import AttackError
from clipedit.core import (
    EditRequest,
    EditSet,
    LayerEdit,
    RewriteHParams,
    apply_edit,
    apply_edit_set,
    apply_rewrite,
    compute_rewrite,
    key_statistics,
    load_edit,
    load_edits,
    register_edit_kind,
    revert_edit,
    revert_edit_set,
    save_edits,
)
from clipedit.defenses.config import DefenseConfig
from clipedit.defenses.defaults import defaults_for
from clipedit.defenses.methods import METHODS, MethodSpec
from clipedit.defenses.resolve import resolve_config
from clipedit.defenses.result import DefenseResult
from clipedit.defenses.run_files import save_run
from clipedit.defenses.typographic import defend, text_exemplars
from clipedit.errors import ArgumentError, ClipeditError, EditError, ModelLoadError, RenderError, SiteError
from clipedit.eval.audit import AuditOutcome, audit
from clipedit.eval.evaluation import EvalOptions, evaluate
from clipedit.eval.predictor import make_predictor
from clipedit.models import ModelBundle, list_models, load_model

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Every one-line error of clipedit and of the attack generator beneath it: ``except clipedit.USER_ERRORS``.
USER_ERRORS = (ClipeditError, AttackError)

__all__ = ["USER_ERRORS", "ArgumentError", "AttackError", "AuditOutcome", "ClipeditError", "DefenseConfig",
           "DefenseResult", "EditError", "EditRequest", "EditSet", "EvalOptions", "LayerEdit", "METHODS",
           "MethodSpec", "ModelBundle", "ModelLoadError", "RenderError", "RewriteHParams", "SiteError",
           "apply_edit", "apply_edit_set", "apply_rewrite", "audit", "compute_rewrite", "defaults_for", "defend",
           "evaluate", "key_statistics", "list_models", "load_edit", "load_edits", "load_model", "make_predictor",
           "register_edit_kind", "resolve_config", "revert_edit", "revert_edit_set", "save_edits",
           "save_run", "text_exemplars"]
