"""The method table (after ROME's ``ALG_DICT``): name -> :class:`MethodSpec`, the one place a method's
properties live.

Every method takes the same exemplars (:class:`DefenseData`) and returns a
:class:`~clipedit.settings.config.DefenseResult`:

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
clipedit's all-token variant).
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
from clipedit.defenses import defense_prefix as dp
from clipedit.defenses.defense_prefix import DefensePrefixHParams, check_text_tower, defense_prefix
from clipedit.defenses.dyslexify import DyslexifyHParams, class_token_sites, dyslexify
from clipedit.defenses.finetune import FinetuneHParams, finetune
from clipedit.defenses.head_ablation import HeadAblationHParams, ablate_heads
from clipedit.defenses.paint import PaintHParams, paint, supported_task
from clipedit.defenses.result import DefenseResult
from clipedit.defenses.typo_train import shared_training_set, shared_validation
from clipedit.defenses.vocabulary import Vocabulary
from clipedit.errors import ClipeditError, EditError
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.defaults import default_layer, offline_settings

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
        n_images: how many exemplar images ``requests`` yields (None: counted when asked).
        keep: returns a fresh iterable of signs the rewrite keeps as they are (``keep_reading``; None: none).
    """

    words: list[str]
    requests: Callable[[], Iterable[EditRequest]]
    exemplars: list[Attack] = field(default_factory=list)
    vocabulary: Optional[Vocabulary] = None
    n_images: Optional[int] = None
    keep: Optional[Callable[[], Iterable[KeepRequest]]] = None

    @property
    def images(self) -> int:
        """How many exemplar images the data holds (``n_images`` when known, else counted)."""
        if self.n_images is not None:
            return self.n_images
        if self.exemplars:
            return len(self.exemplars)
        return sum(int(r.attacked.shape[0]) for r in self.requests())

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
        shared: a cache of typographic splits a caller shares between the methods it runs
            (:func:`~clipedit.defenses.typo_train.shared_training_set`); each run is charged their seconds.
        peers: other methods' settings as the caller gives them (method -> dict over their defaults), for a
            budget set from a peer's (PAINT's); missing: their defaults.
    """

    sites: tuple[str, ...]
    statistics: Callable[[str], KeyStatistics]
    config: DefenseConfig
    split: str = "validation"
    meta: dict[str, Any] = field(default_factory=dict)
    shared: Optional[dict[str, Any]] = None
    peers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A method: its settings class, its run function and its properties.

    Attributes:
        hparams_cls: a dataclass with ``to_dict()`` / ``from_dict()``.
        run: ``run(bundle, data, hparams, context) -> DefenseResult``; its ``details`` carry ``selection``
            (what it chose and by which rule on which split) and ``budget`` (:func:`budget`).
        model_defaults: its settings start from the model's default file (``clipedit/settings/hparams/edit``:
            rank, keep_targets, keep_reading, the default sites); else from ``hparams_cls``'s own defaults.
        word_agnostic: trained once for every word (``compare`` runs it once a seed and scores every word);
            False: word-specific (one run per defended word).
        exemplars: learns from the defended words' rendered exemplars; False: draws its own typographic
            training split from the model's world (``defend`` renders no exemplars for it).
        any_word: the rewrite against any written word: its exemplars are ``"*"``'s vocabulary and its
            settings the model's ``edit-any-word`` default file on top of its ``edit`` file.
        needs_world: needs a labelled world (its splits or its validation scenes come from it).
        applies: ``applies(bundle)`` raises ClipeditError saying why the method does not apply at its
            defaults (e.g. no class token; finetune-local: a default layer that is part of a weight);
            None: every tower. ``compare`` leaves such methods out; a run refuses in its own words.
        plain_weights: its result is plain weights (a state dict any loader reads); False: a hook or a
            prompt change that only clipedit applies.
        in_compare: a method of ``clipedit compare``.
        sweepable: acts on chosen sites with the rewrite's settings (``RewriteHParams``: layer, rank) and
            returns an edit set: ``clipedit sweep`` and ``--layer/--rank auto`` may choose them.
        closed_form: its candidates are the closed-form rewrite's, which the sweep solves from exemplar sums
            shared by every site (else each candidate is one ``run_defense``).
        planned_images: ``planned_images(hparams, config, n_train)``: training images one run sees at
            those settings (methods that train; PAINT's budget is at least each of them).
    """

    hparams_cls: type
    run: Callable[[ModelBundle, DefenseData, Any, MethodContext], DefenseResult]
    model_defaults: bool = False
    word_agnostic: bool = False
    exemplars: bool = True
    any_word: bool = False
    needs_world: bool = False
    applies: Optional[Callable[[ModelBundle], Any]] = None
    plain_weights: bool = True
    in_compare: bool = True
    sweepable: bool = False
    closed_form: bool = False
    planned_images: Optional[Callable[[Any, DefenseConfig, int], int]] = None

    def settings(self, given: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
        """Overrides of the method's settings (``DefenseConfig.hparams`` as a dict): a caller's ``fixed``
        settings (e.g. compare's n_train, n_val, seed) where the settings class has the field, then the user's
        ``given`` (a dict of its fields)."""
        if not isinstance(given, Mapping):
            raise ClipeditError(f"the settings of a method must be a JSON object, got {type(given).__name__}")
        names = {f.name for f in dataclasses.fields(self.hparams_cls)}
        return {**{k: v for k, v in fixed.items() if k in names}, **given}

    def not_applicable(self, bundle: ModelBundle, name: str = "the method") -> Optional[str]:
        """Why the method does not apply to ``bundle`` (None when it does)."""
        if self.applies is not None:
            try:
                self.applies(bundle)
            except ClipeditError as e:
                return str(e)
        if self.needs_world and (bundle.world is None or not bundle.world.classnames):
            return _no_world(bundle, name)
        return None


def _no_world(bundle: ModelBundle, name: str) -> str:
    return f"{bundle.name} has no labelled world to draw {name}'s training/validation splits from"


def budget(images_seen: int, optimizer_steps: int, settings_tried: int, offline: Optional[Mapping] = None,
           **extra: Any) -> dict[str, Any]:
    """A run's budget: training images seen (with repeats), optimizer steps, settings scored on validation,
    the settings an offline grid scored before its defaults were chosen (``offline_settings``; 0: none),
    and more (``train_images``, ``validation_images`` …); ``run_defense`` adds ``seconds``."""
    offline = dict(offline or {"settings": 0, "sources": []})
    return {"images_seen": int(images_seen), "optimizer_steps": int(optimizer_steps),
            "settings_tried": int(settings_tried), "offline_settings": int(offline.get("settings", 0)),
            "offline_sources": list(offline.get("sources", [])), **extra}


def _meta(bundle: ModelBundle, context: MethodContext) -> dict[str, Any]:
    return {"model": bundle.name, "pretrained": bundle.pretrained, **context.meta}


def _fixed(what: str) -> dict[str, Any]:
    return {"rule": f"none: {what}; nothing is tuned at run time", "tolerance": None}


def run_edit(bundle: ModelBundle, data: DefenseData, hparams: RewriteHParams, context: MethodContext
             ) -> DefenseResult:
    """The rank-r rewrite of ``context.sites`` (one site, or several solved in order): one edit set."""
    edit_set = apply_multisite_rewrite(bundle.model, data.requests, hparams, context.sites, context.statistics,
                                       forward=bundle.encode_images, meta=_meta(bundle, context), keep=data.keep)
    any_word = context.config.any_word
    offline = offline_settings(bundle, any_word)
    steps = hparams.steps * len(context.sites) if hparams.solver == "optimize" else 0
    details = {"selection": _fixed(f"the model's default settings (its default file{', any_word' if any_word else ''}; "
                                   f"chosen offline among {offline['settings']} settings on validation)"),
               "budget": budget(data.images, steps, 1, offline, train_images=data.images,
                                reference_images=context.config.n_reference,
                                words=len(data.vocabulary.exemplar_words) if data.vocabulary else len(data.words))}
    return DefenseResult("edit", "+".join(context.sites), edit_set=edit_set, details=details)


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
        request = data.merged()
        finetune(bundle.model, params, request, hparams, forward=bundle.encode_images,
                 frozen_below=site.layer if local else None)
        for name, p in bundle.model.named_parameters():
            if not torch.isfinite(p).all():
                raise EditError(f"fine-tuning produced NaN or inf in {name}")
        n = int(request.attacked.shape[0])
        details = {"selection": _fixed("the paper's baseline settings"),
                   "budget": budget(hparams.steps * n, hparams.steps, 1, train_images=n)}
        return DefenseResult(method, context.sites[0] if local else bundle.image_prefix.rstrip(".") or "model",
                             details=details)
    return run


def _finetune_images(hparams: FinetuneHParams, config: DefenseConfig, n_train: int) -> int:
    return hparams.steps * (config.renders or 1)  # one word's exemplars, every one in every step


def _finetune_local_applies(bundle: ModelBundle) -> None:
    site = resolve_site(bundle.model, default_layer(bundle))
    if not isinstance(site.weight, torch.nn.Parameter):
        raise ClipeditError(f"its default layer ({site.layer}) is part of a weight; finetune-local trains whole "
                            "weights")


def run_head_ablation(bundle: ModelBundle, data: DefenseData, hparams: HeadAblationHParams,
                      context: MethodContext) -> DefenseResult:
    """Greedy ablation of the heads that read the text, tuned on the validation split."""
    ablation = ablate_heads(bundle, data.merged(), data.words, hparams, meta=_meta(bundle, context))
    layers = "+".join(ablation.edit_set.layers) if ablation.edit_set is not None else "none"
    details = {"heads": [list(h) for h in ablation.heads], "scores": ablation.scores, "steps": ablation.steps,
               "selection": ablation.selection,
               "budget": budget(data.images, 0, len(ablation.steps) + 1, train_images=data.images,
                                validation_images=ablation.selection.get("n", 0))}
    return DefenseResult("head-ablation-weights", layers, edit_set=ablation.edit_set, details=details)


def _validation(bundle: ModelBundle, hparams: Any, context: MethodContext, n_signs: int = 0):
    """The shared validation sets at ``hparams.n_val`` (a ``supported`` folder: the supported task)."""
    path = getattr(hparams, "supported", None)
    task = None
    if path is not None:
        key = f"supported:{path}:{getattr(hparams, 'supported_classes', None)}"
        cache = context.shared if context.shared is not None else {}
        if key not in cache:
            cache[key] = supported_task(bundle, path, getattr(hparams, "supported_classes", None))
        task = cache[key]
    return shared_validation(bundle, hparams.n_val, n_signs, task, context.shared)


def _charged(details: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``details`` with the seconds of rendering the shared splits it used (added by run_defense)."""
    details.setdefault("budget", {})["data_seconds"] = round(seconds, 3)
    return details


def run_dyslexify(bundle: ModelBundle, data: DefenseData, hparams: DyslexifyHParams, context: MethodContext
                  ) -> DefenseResult:
    """Dyslexify as published: class-token head ablation (hook members), searched on the validation split."""
    val, secs = _validation(bundle, hparams, context)
    result = dyslexify(bundle, hparams, val=val, meta=_meta(bundle, context))
    edit_set = EditSet.of(result.members, {"method": "dyslexify", "heads": [list(h) for h in result.heads]}) \
        if result.members else None
    details = {"heads": [list(h) for h in result.heads], "scores": result.scores, "steps": result.steps,
               "base": result.base, "rule": result.rule, "selection": result.details.get("selection"),
               "budget": budget(**result.details["budget"])}
    return DefenseResult("dyslexify", "+".join(m.layer for m in result.members) or "none", edit_set=edit_set,
                         details=_charged(details, secs))


def peer_floor(config: DefenseConfig, n_train: int, peers: Mapping[str, Mapping[str, Any]],
               exclude: str = "") -> dict[str, int]:
    """Training images one run of each method that plans them sees at its settings (``peers[name]`` over its
    defaults) and ``n_train`` scenes: the budget PAINT must reach."""
    out = {}
    for name, spec in METHODS.items():
        if spec.planned_images is None or name == exclude:
            continue
        hp = spec.hparams_cls.from_dict(dict(peers.get(name, {})))
        if hasattr(hp, "n_train"):
            hp = dataclasses.replace(hp, n_train=n_train)
        out[name] = int(spec.planned_images(hp, config, n_train))
    return out


def run_paint(bundle: ModelBundle, data: DefenseData, hparams: PaintHParams, context: MethodContext
              ) -> DefenseResult:
    """PAINT: fine-tune the image tower at least as long as its peers train, interpolate back with the
    (lr, checkpoint, α) chosen on validation."""
    floor = peer_floor(context.config, hparams.n_train, context.peers, exclude="paint")
    need = max(floor.values(), default=0)
    hp = hparams if hparams.min_images else dataclasses.replace(hparams, min_images=need)
    train, t1 = shared_training_set(bundle, hp.n_train, hp.seed, context.shared)
    val, t2 = _validation(bundle, hp, context, hp.n_signs)
    result = paint(bundle, hp, train=train, val=val)
    summary = result.summary()
    meets = summary["budget"]["per_lr"]["images_seen"] >= need
    if hp.steps is None and not hparams.min_images and not meets:  # the schedule rule guarantees it
        raise EditError(f"PAINT's schedule sees fewer training images than its peers ({floor})")
    summary["budget"] = budget(**summary["budget"], peer_images=floor, meets_peers=meets)
    return DefenseResult("paint", bundle.image_prefix.rstrip(".") or "model", details=_charged(summary, t1 + t2))


def run_defense_prefix(bundle: ModelBundle, data: DefenseData, hparams: DefensePrefixHParams,
                       context: MethodContext) -> DefenseResult:
    """Defense-Prefix: a learnt token before every class name (a class-prefix member; the weights stay)."""
    train, t1 = shared_training_set(bundle, hparams.n_train, hparams.seed, context.shared)
    val, t2 = _validation(bundle, hparams, context)
    result = defense_prefix(bundle, hparams, train=train, val=val, meta=_meta(bundle, context))
    edit_set = EditSet.of([result.member], {"method": "defense-prefix", "lr": result.lr})
    details = result.summary()
    details["budget"] = budget(**details["budget"])
    return DefenseResult("defense-prefix", result.member.layer, edit_set=edit_set, details=_charged(details, t1 + t2))


def _dyslexify_applies(bundle: ModelBundle) -> None:
    class_token_sites(bundle)


def _defense_prefix_applies(bundle: ModelBundle) -> None:
    check_text_tower(bundle)


#: The table, in ``clipedit compare``'s column order.
METHODS: dict[str, MethodSpec] = {
    "edit": MethodSpec(RewriteHParams, run_edit, model_defaults=True, sweepable=True, closed_form=True),
    "edit-any-word": MethodSpec(RewriteHParams, run_edit, model_defaults=True, word_agnostic=True,
                                any_word=True),
    "dyslexify": MethodSpec(DyslexifyHParams, run_dyslexify, word_agnostic=True, exemplars=False,
                            needs_world=True, applies=_dyslexify_applies, plain_weights=False),
    "head-ablation-weights": MethodSpec(HeadAblationHParams, run_head_ablation, needs_world=True),
    "paint": MethodSpec(PaintHParams, run_paint, word_agnostic=True, exemplars=False, needs_world=True),
    "defense-prefix": MethodSpec(DefensePrefixHParams, run_defense_prefix, word_agnostic=True,
                                 exemplars=False, needs_world=True, applies=_defense_prefix_applies,
                                 plain_weights=False,
                                 planned_images=lambda hp, config, n: dp.images_seen(n, hp)),
    "finetune-local": MethodSpec(FinetuneHParams, _run_finetune(local=True),
                                 applies=_finetune_local_applies),
    "finetune-global": MethodSpec(FinetuneHParams, _run_finetune(local=False),
                                  planned_images=_finetune_images),
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
                            meta={"words": list(data.words), **(meta or {})}, shared=shared, peers=peers or {})
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
