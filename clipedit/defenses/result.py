"""What every method of the table returns: :class:`DefenseResult` (the edit set, details, figures, record)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clipedit.attacks import Attack
from clipedit.core import EditSet, LayerEdit, save_edits
from clipedit.defenses.vocabulary import Vocabulary
from clipedit.errors import ClipeditError
from clipedit.eval.defense_metrics import comparison_rows
from clipedit.eval.results import before_after_metrics, drop_predictions, make_record
from clipedit.models.bundle import ModelBundle


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
