"""What a method is, takes and returns: :class:`MethodSpec` (its settings class, run function and properties),
the exemplars every method learns from (:class:`DefenseData`), what else a run may use (:class:`MethodContext`),
what every run returns (:class:`DefenseResult`: the edit set, details, figures, record) and the budget every
run reports (:func:`budget`).

``run(bundle, data, hparams, context)`` changes ``bundle.model`` in place and returns a
:class:`~clipedit.methods.spec.DefenseResult`; its ``details`` carry a ``selection`` and a ``budget`` entry
(images seen, optimizer steps, settings tried, offline settings, seconds).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.attacks import Attack
from clipedit.core import EditRequest, EditSet, KeepRequest, KeyStatistics, LayerEdit, save_edits
from clipedit.data.prepare.vocabulary import Vocabulary
from clipedit.errors import ClipeditError
from clipedit.eval.defense_metrics import comparison_rows
from clipedit.eval.results import before_after_metrics, drop_predictions, make_record
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig


@dataclass
class DefenseResult:
    """What every method returns.

    Attributes:
        method: the method's name.
        layer: the layers it acted on, joined by ``+`` (``none`` when it changed nothing).
        words: the defended word(s) (``["*"]``: any word).
        edit_set: the edit (weight or hook members), or None for methods that change whole weights
            (fine-tuning, PAINT: the edited model itself is the output).
        details: what the method found (JSON-able: e.g. the heads ablated, PAINT's α per row).
        seconds: time the method took.
        stages: seconds per stage of the ``defend`` call that made it (``evaluation_sets``,
            ``evaluate_before``, ``defend``: exemplars and the method, ``evaluate_after``; a caller's
            timer adds its own, e.g. the CLI's ``load``), and ``total``: the record's ``seconds``.
        exemplars: the rendered exemplars used (empty for ``"*"`` and real photo pairs).
        vocabulary: the vocabulary of ``"*"``.
        config: the resolved configuration (:meth:`DefenseConfig.to_dict`).
        figures: with ``defend(..., evaluate=…)``: ``before`` and ``after`` (evaluate_defense's figures on
            the same sets), ``dataset``, ``classnames``, ``templates`` and ``sets`` (the images, for a report).
    """

    method: str
    layer: str
    words: list[str] = field(default_factory=list)
    edit_set: Optional[EditSet] = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    exemplars: list[Attack] = field(default_factory=list)
    vocabulary: Optional[Vocabulary] = None
    config: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def to_record(self, bundle: ModelBundle, **extra: Any) -> dict[str, Any]:
        """The results record of this defense (:func:`~clipedit.eval.results.make_record`): before/after
        figures when evaluated, the method, layers, resolved config and hparams."""
        fig = self.figures
        fields = {"method": self.method, "layer": self.layer, "defended_words": self.words,
                  "hparams": self.hparams_used(), "config": self.config,
                  **({"seconds": self.stages} if self.stages else {}),
                  **({"details": self.details} if self.details else {}), **extra}  # e.g. PAINT's α curve, selection
        if fig:
            before, after = fig["before"], fig["after"]
            return make_record(dataset=fig["dataset"], bundle=bundle, task="typographic_defense",
                               metrics=before_after_metrics(before, after), before=drop_predictions(before),
                               after=drop_predictions(after), classnames=fig["classnames"],
                               templates=fig["templates"], words=self.words, seed=self.config.get("seed"),
                               n=before["n"], **fields)
        return make_record(dataset="none", bundle=bundle, task="typographic_defense", metrics={}, classnames=[],
                           templates=None, words=self.words, seed=self.config.get("seed"), n=0, **fields)

    def hparams_used(self) -> Any:
        """The method's settings as used: an edit's rank clamped to its exemplar keys is recorded as the
        rank used, with ``rank_requested`` beside it (each member's metadata says the same)."""
        hp = self.config.get("hparams")
        if self.edit_set is None or not isinstance(hp, dict) or "rank" not in hp:
            return hp
        ranks = {m.rank for m in self.edit_set.edits if isinstance(m, LayerEdit)}
        if len(ranks) == 1 and hp.get("rank") not in ranks:
            return {**hp, "rank": ranks.pop(), "rank_requested": hp.get("rank")}
        return hp

    def rows(self) -> list[list]:
        """The before/after table (empty when not evaluated)."""
        return comparison_rows(self.figures["before"], self.figures["after"]) if self.figures else []

    @property
    def edit(self) -> Optional[LayerEdit]:
        """The single weight edit when the set has exactly one member of that kind (else None)."""
        if self.edit_set is not None and len(self.edit_set.edits) == 1 and \
                isinstance(self.edit_set.edits[0], LayerEdit):
            return self.edit_set.edits[0]
        return None

    def save(self, path: str | Path) -> Path:
        """Write the edit set as one ``.safetensors`` file."""
        if self.edit_set is None:
            raise ClipeditError(f"{self.method} leaves no edit to save (it changes the weights directly)")
        return save_edits(path, self.edit_set)


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
            (:func:`~clipedit.data.prepare.typo_train.shared_training_set`); each run is charged their seconds.
        peers: other methods' settings as the caller gives them (method -> dict over their defaults), for a
            budget set from a peer's (PAINT's); missing: their defaults.
        methods: the table the run was dispatched from (:func:`peer_floor` reads its peers there).
    """

    sites: tuple[str, ...]
    statistics: Callable[[str], KeyStatistics]
    config: DefenseConfig
    split: str = "validation"
    meta: dict[str, Any] = field(default_factory=dict)
    shared: Optional[dict[str, Any]] = None
    peers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    methods: Mapping[str, MethodSpec] = field(default_factory=dict)


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


def run_meta(bundle: ModelBundle, context: MethodContext) -> dict[str, Any]:
    """What a run stores with its edit: the model, its weights and the context's metadata."""
    return {"model": bundle.name, "pretrained": bundle.pretrained, **context.meta}


def fixed_selection(what: str) -> dict[str, Any]:
    """The selection record of a method that tunes nothing at run time (``what``: where its settings come from)."""
    return {"rule": f"none: {what}; nothing is tuned at run time", "tolerance": None}


def charged(details: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``details`` with the seconds of rendering the shared splits it used (added by run_defense)."""
    details.setdefault("budget", {})["data_seconds"] = round(seconds, 3)
    return details


def peer_floor(methods: Mapping[str, MethodSpec], config: DefenseConfig, n_train: int,
               peers: Mapping[str, Mapping[str, Any]], exclude: str = "") -> dict[str, int]:
    """Training images one run of each method that plans them sees at its settings (``peers[name]`` over its
    defaults) and ``n_train`` scenes: the budget PAINT must reach (``methods``: the table)."""
    out = {}
    for name, spec in methods.items():
        if spec.planned_images is None or name == exclude:
            continue
        hp = spec.hparams_cls.from_dict(dict(peers.get(name, {})))
        if hasattr(hp, "n_train"):
            hp = dataclasses.replace(hp, n_train=n_train)
        out[name] = int(spec.planned_images(hp, config, n_train))
    return out
