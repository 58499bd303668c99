"""The method table (after ROME's ``ALG_DICT``): name -> :class:`MethodSpec` (settings class, run function).

Every method takes the same exemplars (:class:`DefenseData`) and returns a
:class:`~clipedit.defenses.config.DefenseResult`:

    spec = METHODS["edit"]
    result = spec.run(bundle, data, hparams, context)     # hparams: a spec.hparams_cls

``run(bundle, data, hparams, context)`` changes ``bundle.model`` in place. ``context`` gives the sites,
the key statistics, the words, the split a method may tune on (validation only) and metadata. The table
holds the rank-r rewrite (``edit``), the paper's fine-tuning baselines (``finetune-local``/``-global``)
and the peer defenses (``dyslexify``, ``paint`` and ``defense-prefix`` as published;
``head-ablation-weights``, clipedit's all-token variant); other modules add theirs with
:func:`register_method`. :func:`run_defense` is the one dispatcher.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from clipedit.attacks import Attack
from clipedit.core import EditRequest, KeepRequest, KeyStatistics, RewriteHParams, resolve_site
from clipedit.core.edit_sets import EditSet
from clipedit.core.multisite import apply_multisite_rewrite
from clipedit.defenses.config import DefenseConfig
from clipedit.defenses.defense_prefix import DefensePrefixHParams, defense_prefix
from clipedit.defenses.dyslexify import DyslexifyHParams, dyslexify
from clipedit.defenses.finetune import FinetuneHParams, finetune
from clipedit.defenses.head_ablation import HeadAblationHParams, ablate_heads
from clipedit.defenses.paint import PaintHParams, paint
from clipedit.defenses.result import DefenseResult
from clipedit.defenses.vocabulary import Vocabulary
from clipedit.errors import ClipeditError, EditError
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)


@dataclass
class DefenseData:
    """The exemplars every method learns from (the same budget for each).

    Attributes:
        words: the defended word(s) (``["*"]``: any word).
        requests: returns a fresh iterable of exemplar batches (called once per site of an edit, so
            exemplars may be rendered on the fly and never held all at once).
        exemplars: the rendered attacks behind them (empty for ``"*"`` and real photo pairs).
        vocabulary: ``"*"``'s vocabulary (the exemplar words are drawn from it).
        keep: returns a fresh iterable of signs the rewrite keeps as they are (``keep_reading``; None: none).
    """

    words: list[str]
    requests: Callable[[], Iterable[EditRequest]]
    exemplars: list[Attack] = field(default_factory=list)
    vocabulary: Optional[Vocabulary] = None
    keep: Optional[Callable[[], Iterable[KeepRequest]]] = None

    @classmethod
    def of(cls, words: list[str], request: EditRequest, exemplars: Optional[list[Attack]] = None) -> DefenseData:
        """Data of one ready request."""
        return cls(words, lambda: [request], list(exemplars or []))

    def merged(self) -> EditRequest:
        """One request holding every batch (for methods that need all exemplars at once)."""
        reqs = list(self.requests())
        if len(reqs) == 1:
            return reqs[0]
        return EditRequest(*(torch.cat([getattr(r, k) for r in reqs]) for k in ("attacked", "target", "mask")))


@dataclass
class MethodContext:
    """What a method may use beside its data and settings.

    Attributes:
        sites: the layers to act on, in order (resolved: never empty).
        statistics: ``layer -> KeyStatistics`` of the model as it is when called.
        config: the resolved configuration.
        split: the split a method may tune on (always ``validation``; tests are for reporting).
        meta: stored with the edit (model, words …).
    """

    sites: tuple[str, ...]
    statistics: Callable[[str], KeyStatistics]
    config: DefenseConfig
    split: str = "validation"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A method: its settings class and its run function.

    Attributes:
        hparams_cls: a dataclass with ``to_dict()`` / ``from_dict()``.
        run: ``run(bundle, data, hparams, context) -> DefenseResult``.
        config_field: the DefenseConfig field that holds its settings (``hparams``: the rewrite's;
            ``finetune``), if any.
        defaults: its settings from a resolved config when none are given (default: ``config_field``'s
            value, else ``hparams_cls()``).
    """

    hparams_cls: type
    run: Callable[[ModelBundle, DefenseData, Any, MethodContext], DefenseResult]
    config_field: Optional[str] = None
    defaults: Optional[Callable[[DefenseConfig], Any]] = None

    def resolve_hparams(self, config: DefenseConfig) -> Any:
        """The settings ``run`` receives: ``config.method_hparams`` (an instance, or a dict over the defaults)."""
        if self.defaults is not None:
            base = self.defaults(config)
        elif self.config_field is not None:
            base = getattr(config, self.config_field)
        else:
            base = self.hparams_cls()
        given = config.method_hparams
        if given is None or isinstance(given, self.hparams_cls):
            return base if given is None else given
        if isinstance(given, Mapping):
            return self.hparams_cls.from_dict({**base.to_dict(), **given})
        raise ClipeditError(f"settings of {config.method} must be a {self.hparams_cls.__name__} or a dict, "
                            f"got {type(given).__name__}")


def _meta(bundle: ModelBundle, context: MethodContext) -> dict[str, Any]:
    return {"model": bundle.name, "pretrained": bundle.pretrained, **context.meta}


def run_edit(bundle: ModelBundle, data: DefenseData, hparams: RewriteHParams, context: MethodContext
             ) -> DefenseResult:
    """The rank-r rewrite of ``context.sites`` (one site, or several solved in order): one edit set."""
    edit_set = apply_multisite_rewrite(bundle.model, data.requests, hparams, context.sites, context.statistics,
                                       forward=bundle.encode_images, meta=_meta(bundle, context), keep=data.keep)
    return DefenseResult("edit", ",".join(context.sites), edit_set=edit_set)


def _run_finetune(local: bool) -> Callable:
    def run(bundle: ModelBundle, data: DefenseData, hparams: FinetuneHParams, context: MethodContext
            ) -> DefenseResult:
        method = "finetune-local" if local else "finetune-global"
        if local:
            if len(context.sites) != 1:
                raise ClipeditError(f"finetune-local trains one layer; got {len(context.sites)}: "
                                    f"{', '.join(context.sites)}")
            site = resolve_site(bundle.model, context.sites[0])
            if not isinstance(site.weight, torch.nn.Parameter):
                raise ClipeditError(f"finetune-local trains a whole weight; {site.layer} is part of one (pass a "
                                    "module's layer, e.g. an mlp.c_proj)")
            params = [site.weight]
        else:
            params = list(bundle.image_module.parameters())
        finetune(bundle.model, params, data.merged(), hparams, forward=bundle.encode_images)
        for name, p in bundle.model.named_parameters():
            if not torch.isfinite(p).all():
                raise EditError(f"fine-tuning produced NaN or inf in {name}")
        return DefenseResult(method, context.sites[0] if local else bundle.image_prefix.rstrip(".") or "model")
    return run


def run_head_ablation(bundle: ModelBundle, data: DefenseData, hparams: HeadAblationHParams,
                      context: MethodContext) -> DefenseResult:
    """Greedy ablation of the heads that read the text, tuned on the validation split."""
    ablation = ablate_heads(bundle, data.merged(), data.words, hparams, meta=_meta(bundle, context))
    layers = ",".join(ablation.edit_set.layers) if ablation.edit_set is not None else "none"
    details = {"heads": ablation.heads, "scores": ablation.scores, "steps": ablation.steps,
               "selection": ablation.selection}
    return DefenseResult("head-ablation-weights", layers, edit_set=ablation.edit_set, details=details)


def run_dyslexify(bundle: ModelBundle, data: DefenseData, hparams: DyslexifyHParams, context: MethodContext
                  ) -> DefenseResult:
    """Dyslexify as published: class-token head ablation (hook members), searched on its training split."""
    result = dyslexify(bundle, hparams, meta=_meta(bundle, context))
    edit_set = EditSet.of(result.members, {"method": "dyslexify", "heads": [list(h) for h in result.heads]}) \
        if result.members else None
    details = {"heads": [list(h) for h in result.heads], "scores": result.scores, "steps": result.steps,
               "base": result.base, "rule": result.rule, "selection": result.details.get("selection")}
    return DefenseResult("dyslexify", ",".join(result_layers(result)) or "none", edit_set=edit_set, details=details)


def result_layers(result) -> list[str]:
    return [m.layer for m in result.members]


def run_paint(bundle: ModelBundle, data: DefenseData, hparams: PaintHParams, context: MethodContext
              ) -> DefenseResult:
    """PAINT: fine-tune the image tower, interpolate back with the α chosen on validation."""
    result = paint(bundle, hparams)
    return DefenseResult("paint", bundle.image_prefix.rstrip(".") or "model", details=dataclasses.asdict(result))


def run_defense_prefix(bundle: ModelBundle, data: DefenseData, hparams: DefensePrefixHParams,
                       context: MethodContext) -> DefenseResult:
    """Defense-Prefix: a learnt token before every class name (a class-prefix member; the weights stay)."""
    result = defense_prefix(bundle, hparams, meta=_meta(bundle, context))
    edit_set = EditSet.of([result.member], {"method": "defense-prefix", "lr": result.lr})
    return DefenseResult("defense-prefix", result.member.layer, edit_set=edit_set, details=result.summary())


METHODS: dict[str, MethodSpec] = {
    "edit": MethodSpec(RewriteHParams, run_edit, config_field="hparams"),
    "finetune-local": MethodSpec(FinetuneHParams, _run_finetune(local=True), config_field="finetune"),
    "finetune-global": MethodSpec(FinetuneHParams, _run_finetune(local=False), config_field="finetune"),
    "dyslexify": MethodSpec(DyslexifyHParams, run_dyslexify, defaults=lambda config: DyslexifyHParams()),
    "head-ablation-weights": MethodSpec(HeadAblationHParams, run_head_ablation),
    "paint": MethodSpec(PaintHParams, run_paint, defaults=lambda config: PaintHParams()),
    "defense-prefix": MethodSpec(DefensePrefixHParams, run_defense_prefix,
                                 defaults=lambda config: DefensePrefixHParams()),
}


def register_method(name: str, spec: MethodSpec) -> None:
    """Add a method to the table (a peer defense's module does this on import)."""
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
                statistics: Callable[[str], KeyStatistics], meta: Optional[dict] = None) -> DefenseResult:
    """Run ``config.method`` (a resolved config) on ``data``, in place: the one dispatcher of every caller.

    The result carries the words, exemplars, time and the resolved config; an edit set also carries the
    config in its metadata.
    """
    spec = method_spec(config.method)
    if data.vocabulary is not None:
        meta = {"vocabulary": data.vocabulary.source, "n_words": len(data.vocabulary.exemplar_words), **(meta or {})}
    context = MethodContext(sites=tuple(config.sites), statistics=statistics, config=config,
                            meta={"words": list(data.words), **(meta or {})})
    start = time.perf_counter()
    result = spec.run(bundle, data, config.method_hparams, context)
    recorded = config.to_dict()
    if result.edit_set is not None:
        result.edit_set.meta.setdefault("method", config.method)
        result.edit_set.meta["config"] = recorded
    return dataclasses.replace(result, words=list(data.words), exemplars=list(data.exemplars),
                               vocabulary=data.vocabulary, seconds=round(time.perf_counter() - start, 3),
                               config=recorded)
