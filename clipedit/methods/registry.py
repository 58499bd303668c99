"""The method table (after ROME's ``ALG_DICT``): name -> :class:`~clipedit.methods.spec.MethodSpec`, the one
place a method's properties live, and :func:`run_defense`, the one dispatcher of every caller.

Every method takes the same exemplars (:class:`~clipedit.methods.spec.DefenseData`) and returns a
:class:`~clipedit.methods.spec.DefenseResult`:

    spec = METHODS["edit"]
    result = spec.run(bundle, data, config.hparams, context)     # a resolved config's hparams: a spec.hparams_cls

``run(bundle, data, hparams, context)`` changes ``bundle.model`` in place. ``context`` gives the sites,
the key statistics, the words, the split a method may tune on (validation only), a cache of the
typographic splits a caller shares between methods, and metadata. A spec also says whether the method
is word-specific or word-agnostic, whether it learns from the defended word's exemplars, whether it is
the rewrite against any word (``"*"``), which towers it applies to, whether its result is plain weights,
and how many training images it plans to see (so that PAINT's budget is set from its peers'); each run
reports its details, with a ``selection`` and a ``budget`` entry (images seen, optimizer steps,
settings tried, offline settings, seconds). ``defend``, ``sweep`` and ``compare`` dispatch only through
this table (:func:`run_defense`); other modules add theirs with :func:`register_method`.

The table holds the rank-r rewrite (``edit``; ``edit-any-word``: the same rewrite against any written
word, ``defend --text '*'``), the paper's fine-tuning baselines (``finetune-local``/``-global``) and the
peer defenses (``dyslexify``, ``paint`` and ``defense-prefix`` as published; ``head-ablation-weights``,
clipedit's all-token variant); each one's run is in its own module of this package.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from clipedit.core import KeyStatistics, RewriteHParams
from clipedit.errors import ClipeditError
from clipedit.methods.defense_prefix import DefensePrefixHParams, check_text_tower, images_seen, run_defense_prefix
from clipedit.methods.dyslexify import DyslexifyHParams, class_token_sites, run_dyslexify
from clipedit.methods.finetune import FinetuneHParams, finetune_images, finetune_local_applies, run_finetune
from clipedit.methods.head_ablation import HeadAblationHParams, run_head_ablation
from clipedit.methods.paint import PaintHParams, run_paint
from clipedit.methods.rewrite import run_edit
from clipedit.methods.spec import DefenseData, DefenseResult, MethodContext, MethodSpec
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig

#: The table, in ``clipedit compare``'s column order.
METHODS: dict[str, MethodSpec] = {
    "edit": MethodSpec(RewriteHParams, run_edit, model_defaults=True, sweepable=True, closed_form=True),
    "edit-any-word": MethodSpec(RewriteHParams, run_edit, model_defaults=True, word_agnostic=True,
                                any_word=True),
    "dyslexify": MethodSpec(DyslexifyHParams, run_dyslexify, word_agnostic=True, exemplars=False,
                            needs_world=True, applies=class_token_sites, plain_weights=False),
    "head-ablation-weights": MethodSpec(HeadAblationHParams, run_head_ablation, needs_world=True),
    "paint": MethodSpec(PaintHParams, run_paint, word_agnostic=True, exemplars=False, needs_world=True),
    "defense-prefix": MethodSpec(DefensePrefixHParams, run_defense_prefix, word_agnostic=True,
                                 exemplars=False, needs_world=True, applies=check_text_tower,
                                 plain_weights=False,
                                 planned_images=lambda hp, config, n: images_seen(n, hp)),
    "finetune-local": MethodSpec(FinetuneHParams, run_finetune(local=True), applies=finetune_local_applies),
    "finetune-global": MethodSpec(FinetuneHParams, run_finetune(local=False), planned_images=finetune_images),
}


def register_method(name: str, spec: MethodSpec) -> None:
    """Add a method to the table: ``defend``, ``sweep`` and ``compare`` run it from then on."""
    if not isinstance(spec, MethodSpec):
        raise ClipeditError(f"register_method takes a MethodSpec, got {type(spec).__name__}")
    if name in METHODS and METHODS[name] is not spec:
        raise ClipeditError(f"method {name!r} is already in the table")
    METHODS[name] = spec


def method_spec(name: str) -> MethodSpec:
    """The table's entry for ``name``; an unknown name is one line naming the known ones."""
    spec = METHODS.get(name)
    if spec is None:
        raise ClipeditError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return spec


def run_defense(bundle: ModelBundle, data: DefenseData, config: DefenseConfig,
                statistics: Callable[[str], KeyStatistics], meta: Optional[dict] = None,
                shared: Optional[dict[str, Any]] = None,
                peers: Optional[Mapping[str, Mapping[str, Any]]] = None) -> DefenseResult:
    """Run ``config.method`` (a resolved config) on ``data``, in place: the one dispatcher of every caller.

    Args:
        shared: a cache of typographic splits shared with other runs (:class:`MethodContext`).
        peers: other methods' settings as the caller gives them (PAINT's budget floor).

    The result carries the words, exemplars, time and the resolved config; an edit set also carries the
    config in its metadata; ``details["budget"]["seconds"]`` is the run's time plus the seconds of the
    shared splits it used.

    Raises:
        ClipeditError: the method does not apply to the model.
    """
    spec = method_spec(config.method)
    why = spec.not_applicable(bundle, config.method)  # what the model lacks first (a text tower), then the world
    if why:
        raise ClipeditError(f"{config.method} does not apply to {bundle.name}: {why}")
    if data.vocabulary is not None:
        meta = {"vocabulary": data.vocabulary.source, "n_words": len(data.vocabulary.exemplar_words), **(meta or {})}
    context = MethodContext(sites=tuple(config.sites), statistics=statistics, config=config,
                            meta={"words": list(data.words), **(meta or {})}, shared=shared, peers=peers or {},
                            methods=METHODS)
    start = time.perf_counter()
    result = spec.run(bundle, data, config.hparams, context)
    seconds = round(time.perf_counter() - start, 3)
    recorded = config.to_dict()
    if result.edit_set is not None:
        result.edit_set.meta.setdefault("method", config.method)
        result.edit_set.meta["config"] = recorded
    details = dict(result.details)
    spent = details.get("budget")
    if spent is not None:
        details["budget"] = {**spent, "seconds": round(seconds + spent.get("data_seconds", 0.0), 3)}
    return dataclasses.replace(result, method=config.method, details=details, words=list(data.words),
                               exemplars=list(data.exemplars), vocabulary=data.vocabulary, seconds=seconds,
                               config=recorded)
