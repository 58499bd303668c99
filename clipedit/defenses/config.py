"""What a typographic defense is asked to do (:class:`DefenseConfig`) and what it returns (:class:`Defense`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from PIL import Image

from attacks import Attack
from clipedit.core import LayerEdit, RewriteHParams, save_edit
from clipedit.core.edit_sets import EditSet, save_edit_set
from clipedit.defenses.defaults import default_layer, defaults_for
from clipedit.defenses.finetune import FinetuneHParams
from clipedit.defenses.vocabulary import Vocabulary
from clipedit.errors import ClipeditError
from clipedit.models.bundle import ModelBundle


@dataclass
class DefenseConfig:
    """How to defend; every ``None`` is filled from ``defaults.json`` for the model (:func:`defaults_for`).

    Attributes:
        method: ``edit`` (the rewrite) or a fine-tuning baseline on the same exemplars.
        hparams: the rewrite's settings (layer None: the model's default site).
        renders: exemplars rendered per word (varied font, size, colour, position, object).
        mask: edit the locations of the glyphs (``text``) or of the whole label (``label``).
        reference: folder of reference images for the key statistics (default: the model's world's).
        n_reference: reference images drawn from the model's world.
        photos: photos to render exemplars on, in place of the model's world.
        vocab: a word list for ``"*"`` (default: open_clip's tokenizer words, class names, random strings).
        vocab_words: exemplar words ``"*"`` renders (``renders`` each).
        sites: layers of a multi-site edit, solved in this order (None: ``hparams.layer`` alone; with
            ``hparams`` None the model's default sites, when it has several).
    """

    method: Literal["edit", "finetune-local", "finetune-global", "head-ablation", "paint"] = "edit"
    hparams: Optional[RewriteHParams] = None
    renders: Optional[int] = None
    seed: int = 0
    mask: Optional[Literal["text", "label"]] = None
    reference: Optional[Path] = None
    n_reference: Optional[int] = None
    photos: Optional[Sequence[Image.Image]] = None
    finetune: FinetuneHParams = field(default_factory=FinetuneHParams)
    vocab: Optional[Path] = None
    vocab_words: Optional[int] = None
    sites: Optional[tuple[str, ...]] = None

    def resolved(self, bundle: ModelBundle) -> DefenseConfig:
        """A copy with every unset field taken from the model's defaults."""
        d = defaults_for(bundle)
        hp = self.hparams or RewriteHParams(layer=d.layer, rank=d.rank, cov_reg=d.cov_reg, keep_targets=d.keep_targets)
        sites = self.sites
        if sites is None and self.hparams is None and self.method == "edit":
            sites = d.sites
        if hp.layer is None:
            hp = dataclasses.replace(hp, layer=default_layer(bundle))
        return dataclasses.replace(self, hparams=hp, renders=self.renders or d.renders, mask=self.mask or d.mask,
                                   n_reference=self.n_reference or d.n_reference, sites=sites)


@dataclass
class Defense:
    """The outcome: the edit (``method="edit"``) and what was used to make it."""

    layer: str
    method: str
    words: list[str]
    edit: Optional[LayerEdit]
    exemplars: list[Attack]
    edit_set: Optional[EditSet] = None
    vocabulary: Optional[Vocabulary] = None
    details: Optional[object] = None  # head-ablation: the HeadAblation; paint: the PaintResult
    renders: Optional[int] = None  # renders per exemplar word ('*': rendered batch by batch, not kept)

    def save(self, path: str | Path) -> Path:
        """Write the edit (one site) or the edit set (several sites; head ablation) as ``.safetensors``."""
        if self.edit is not None:
            return save_edit(path, self.edit)
        if self.edit_set is not None:
            return save_edit_set(path, self.edit_set)
        raise ClipeditError(f"{self.method} leaves no edit to save (it changes the weights directly)")
