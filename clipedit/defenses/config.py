"""What a defense is asked to do (:class:`DefenseConfig`, filled in one place by :func:`resolve_config`)
and what every method returns (:class:`DefenseResult`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from attacks import Attack
from clipedit.core import EditSet, LayerEdit, RewriteHParams, save_edits
from clipedit.defenses.defaults import defaults_for
from clipedit.defenses.finetune import FinetuneHParams
from clipedit.defenses.vocabulary import Vocabulary
from clipedit.errors import ClipeditError, SiteError
from clipedit.eval.defense_metrics import comparison_rows
from clipedit.eval.results import before_after_metrics, drop_predictions, make_record
from clipedit.models.bundle import ModelBundle

#: Flat override keys that set a field of the rewrite's :class:`RewriteHParams`.
REWRITE_KEYS = ("rank", "solver", "cov_reg", "keep_targets", "mask_threshold", "steps", "lr", "project_every")


@dataclass
class DefenseConfig:
    """How to defend. Build one and pass it to :func:`resolve_config` (``defend`` and the CLI do): every
    ``None`` is filled from ``defaults.json`` for the model, once, there.

    Attributes:
        method: a name in :data:`clipedit.defenses.methods.METHODS` (``edit``: the rewrite).
        hparams: the rewrite's settings, as given in full (None: the model's defaults; its ``layer`` None:
            the model's default site(s)).
        renders: exemplars rendered per word (varied font, size, colour, position, object).
        mask: edit the locations of the glyphs (``text``) or of the whole label (``label``).
        reference: folder of reference images for the key statistics (default: the model's world's).
        n_reference: reference images drawn from the model's world.
        photos: photos to render exemplars on, in place of the model's world.
        finetune: the fine-tuning baselines' (and PAINT's) training settings.
        vocab: a word list for ``"*"`` (default: open_clip's tokenizer words, class names, random strings).
        vocab_words: exemplar words ``"*"`` renders (``renders`` each).
        sites: the layers the method acts on, in order (an edit over several sites is solved in this
            order); None: ``hparams.layer``, else the model's default sites.
        method_hparams: settings of the method (an instance of its ``hparams_cls`` or a dict of its
            fields, e.g. from ``--hparams FILE.json``); resolved: what the method's ``run`` receives.
        any_word: set by :func:`resolve_config` for ``"*"`` (its defaults were used).
    """

    method: str = "edit"
    hparams: Optional[RewriteHParams] = None
    renders: Optional[int] = None
    seed: int = 0
    mask: Optional[str] = None
    reference: Optional[Path] = None
    n_reference: Optional[int] = None
    photos: Optional[Sequence[Image.Image]] = None
    finetune: FinetuneHParams = field(default_factory=FinetuneHParams)
    vocab: Optional[Path] = None
    vocab_words: Optional[int] = None
    sites: Optional[tuple[str, ...]] = None
    method_hparams: Any = None
    any_word: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (recorded in results and edit metadata; photos as a count)."""
        mh = self.method_hparams
        return {"method": self.method, "sites": list(self.sites) if self.sites else None,
                "hparams": self.hparams.to_dict() if self.hparams is not None else None,
                "method_hparams": mh.to_dict() if hasattr(mh, "to_dict") else mh,
                "renders": self.renders, "seed": self.seed, "mask": self.mask,
                "reference": str(self.reference) if self.reference is not None else None,
                "n_reference": self.n_reference, "photos": len(self.photos) if self.photos else None,
                "finetune": self.finetune.to_dict(), "vocab": str(self.vocab) if self.vocab is not None else None,
                "vocab_words": self.vocab_words, "any_word": self.any_word}


def resolve_config(bundle: ModelBundle, overrides: DefenseConfig | Mapping[str, Any] | None = None,
                   any_word: bool = False) -> DefenseConfig:
    """The one place defaults are filled: ``overrides`` on top of ``defaults.json`` for ``bundle``.

    Args:
        overrides: a :class:`DefenseConfig` (its ``None`` fields are filled) or a mapping of flat keys:
            any field of DefenseConfig, ``layer`` (a name, ``"a,b"`` or a list: several are one edit
            over those sites, in order) and the rewrite's ``rank``, ``solver``, ``cov_reg``,
            ``keep_targets``, ``mask_threshold``, ``steps``, ``lr`` (given ones override the model's
            defaults, the rest stay). ``hparams`` may be a dict (the method's settings).
        any_word: ``"*"``: the ``any_word`` defaults on top of the model's.

    Sites, one rule for every method and caller: the sites given (``sites``, or ``layer``) in order;
    none given: the model's default sites for a closed-form edit (several for some models, e.g.
    mini-vit), else its single default layer.
    """
    from clipedit.defenses.methods import method_spec

    config, given = (overrides, {}) if isinstance(overrides, DefenseConfig) else _from_mapping(overrides or {})
    spec = method_spec(config.method)
    d = defaults_for(bundle, any_word=any_word)
    if config.hparams is not None:
        hp = dataclasses.replace(config.hparams, **given)
    else:
        closed_form = given.get("solver", "closed-form") == "closed-form"
        hp = RewriteHParams(**{"rank": d.rank, "cov_reg": d.cov_reg,
                               "keep_targets": d.keep_targets if closed_form else 0.0, **given})
    sites = tuple(config.sites) if config.sites else (hp.layer,) if hp.layer else None
    if sites is None:
        default_sites = d.sites if config.method == "edit" and hp.solver == "closed-form" else None
        if default_sites is None and d.layer is None:
            raise SiteError(f"no default layer for {type(bundle.image_module).__name__}; pass one with --layer")
        sites = default_sites or (d.layer,)
    if len(sites) != len(set(sites)):
        raise ClipeditError(f"a layer is listed twice among the sites: {', '.join(sites)}")
    if len(sites) > 1 and hp.solver != "closed-form":
        raise ClipeditError(f"a multi-site edit ({', '.join(sites)}) is solved in closed form; pass one --layer "
                            "for --solver optimize")
    hp = dataclasses.replace(hp, layer=sites[0] if len(sites) == 1 else None)
    resolved = dataclasses.replace(config, hparams=hp, sites=sites, renders=config.renders or d.renders,
                                   mask=config.mask or d.mask, n_reference=config.n_reference or d.n_reference,
                                   vocab_words=config.vocab_words or d.vocab_words, any_word=any_word)
    if spec.config_field and config.method_hparams is getattr(config, spec.config_field):
        resolved = dataclasses.replace(resolved, method_hparams=None)  # resolved before: the field is the truth
    method_hparams = spec.resolve_hparams(resolved)
    synced = {spec.config_field: method_hparams} if spec.config_field else {}
    return dataclasses.replace(resolved, method_hparams=method_hparams, **synced)


def _from_mapping(values: Mapping[str, Any]) -> tuple[DefenseConfig, dict[str, Any]]:
    """(the DefenseConfig of the flat keys, the rewrite settings given) — see :func:`resolve_config`."""
    values = {k: v for k, v in values.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(DefenseConfig)}
    unknown = sorted(set(values) - fields - set(REWRITE_KEYS) - {"layer"})
    if unknown:
        raise ClipeditError(f"unknown defense setting(s): {', '.join(unknown)}")
    layer = values.pop("layer", None)
    if isinstance(layer, str):
        layer = [s.strip() for s in layer.split(",")]
    if layer is not None:
        if not layer or any(not s for s in layer):
            raise ClipeditError(f"--layer takes dotted layer names, comma-separated; got {','.join(layer)!r}")
        values.setdefault("sites", tuple(layer))
    given = {k: values.pop(k) for k in REWRITE_KEYS if k in values}
    if isinstance(values.get("hparams"), Mapping):  # the method's settings as a dict (the rewrite's: under the flags)
        if values.get("method", "edit") == "edit":
            given = {**values.pop("hparams"), **given}
        else:
            values["method_hparams"] = values.pop("hparams")
    return DefenseConfig(**values), given


@dataclass
class DefenseResult:
    """What every method returns.

    Attributes:
        method: the method's name.
        layer: the layers it acted on, comma-separated (``none`` when it changed nothing).
        words: the defended word(s) (``["*"]``: any word).
        edit_set: the edit (weight or hook members), or None for methods that change whole weights
            (fine-tuning, PAINT: the edited model itself is the output).
        details: what the method found (JSON-able: e.g. the heads ablated, PAINT's α per row).
        seconds: time the method took.
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
    exemplars: list[Attack] = field(default_factory=list)
    vocabulary: Optional[Vocabulary] = None
    config: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def to_record(self, bundle: ModelBundle, **extra: Any) -> dict[str, Any]:
        """The results record of this defense (:func:`~clipedit.eval.results.make_record`): before/after
        figures when evaluated, the method, layers, resolved config and hparams."""
        fig = self.figures
        fields = {"method": self.method, "layer": self.layer, "defended_words": self.words,
                  "hparams": self.config.get("method_hparams"), "config": self.config, **extra}
        if fig:
            before, after = fig["before"], fig["after"]
            return make_record(dataset=fig["dataset"], bundle=bundle, task="typographic_defense",
                               metrics=before_after_metrics(before, after), before=drop_predictions(before),
                               after=drop_predictions(after), classnames=fig["classnames"],
                               templates=fig["templates"], words=self.words, seed=self.config.get("seed"),
                               n=before["n"], **fields)
        return make_record(dataset="none", bundle=bundle, task="typographic_defense", metrics={}, classnames=[],
                           templates=None, words=self.words, seed=self.config.get("seed"), n=0, **fields)

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


Defense = DefenseResult  # the name of earlier releases
