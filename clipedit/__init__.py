"""clipedit: defend CLIP against typographic attacks by rewriting one layer, and audit models for it.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod", evaluate=clipedit.EvalOptions(n=200))
    print(defense.figures["before"]["text_acc"], defense.figures["after"]["text_acc"])
    clipedit.save_edits("ipod-edit.safetensors", defense.edit_set)

The names below are the public API (load, defend, evaluate, audit, compare, edits, settings, results, the
method table, errors); everything else is imported from its module (``clipedit.core``, ``clipedit.methods``,
``clipedit.defenses``, ``clipedit.selection``, ``clipedit.eval``, ``clipedit.models``, ``clipedit.errors``, ...).

Layers, lowest first (each imports only from those before it): ``errors``/``io``, ``core`` (the
rewrite, independent of CLIP), ``data``, ``mini`` (the generated world), ``models``, ``eval``, the settings
(``defenses.config``/``defaults``), ``data.prepare`` (what a defense learns from and is scored on),
``methods`` (one module per method, the table), ``defenses`` (``defend()``, its settings resolved and its
files), ``selection`` (sweep, compare), ``commands``. The attack generator is the separate package ``attacks/``
of the repository, installed as ``clipedit.attacks`` by the package-dir mapping of ``pyproject.toml`` (a wheel
and an editable install alike; clipedit runs installed, as its bundled minis are package data too). It imports
nothing from clipedit.
"""
import logging

from clipedit.attacks import AttackError
from clipedit.core import apply_edit_set, load_edits, revert_edit_set, save_edits
from clipedit.defenses.run_files import save_run
from clipedit.defenses.typographic import defend
from clipedit.errors import ClipeditError
from clipedit.eval.audit import audit
from clipedit.eval.evaluation import EvalOptions, evaluate
from clipedit.methods.registry import METHODS, register_method
from clipedit.methods.spec import DefenseResult, MethodSpec
from clipedit.models import list_models, load_model
from clipedit.selection.compare import CompareSettings, compare
from clipedit.settings.resolve import resolve_config

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Every one-line error of clipedit and of the attack generator beneath it: ``except clipedit.USER_ERRORS``.
USER_ERRORS = (ClipeditError, AttackError)

__all__ = ["METHODS", "USER_ERRORS", "ClipeditError", "CompareSettings", "DefenseResult", "EvalOptions",
           "MethodSpec", "apply_edit_set", "audit", "compare", "defend", "evaluate", "list_models", "load_edits",
           "load_model", "register_method", "resolve_config", "revert_edit_set", "save_edits", "save_run"]
