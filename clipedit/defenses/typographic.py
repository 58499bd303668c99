"""Defend a CLIP model against written words: build exemplars, rewrite one layer, report the effect.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")          # edits bundle.model in place
    clipedit.save_edit("ipod.safetensors", defense.edit)

``defend(bundle, "*")`` defends against any written word: exemplars rendered from a broad vocabulary
(:mod:`clipedit.defenses.vocabulary`), optionally edited over several sites (``DefenseConfig.sites``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import Image

from attacks import Attack
from clipedit.core import EditRequest, KeyStatistics, LayerEdit, RewriteHParams, key_statistics
from clipedit.core.edit_sets import EditSet
from clipedit.data.folders import files_key, image_paths
from clipedit.data.images import LazyImages, to_batches
from clipedit.data.worlds import PhotoWorld, World
from clipedit.defenses.defaults import default_layer, defaults_for
from clipedit.defenses.edit_requests import request_from_attacks
from clipedit.defenses.finetune import FinetuneHParams
from clipedit.defenses.methods import run_method
from clipedit.defenses.vocabulary import ANY_WORD, Vocabulary
from clipedit.errors import ClipeditError
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

EXEMPLAR_SEED_OFFSET = 1_000  # exemplar renders never share a seed with evaluation sets


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
        sites: layers of a multi-site edit, solved in this order (None: ``hparams.layer`` alone).
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
        hp = self.hparams or RewriteHParams(layer=d.layer, rank=d.rank, cov_reg=d.cov_reg)
        if hp.layer is None:
            hp = dataclasses.replace(hp, layer=default_layer(bundle))
        return dataclasses.replace(self, hparams=hp, renders=self.renders or d.renders, mask=self.mask or d.mask,
                                   n_reference=self.n_reference or d.n_reference)


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


def world_of(bundle: ModelBundle, photos: Optional[Sequence[Image.Image]] = None) -> World:
    """The world exemplars are drawn from: ``photos`` when given, else the model's, else scikit-image photos."""
    if photos:
        return PhotoWorld(photos)
    return bundle.world or PhotoWorld()


def text_exemplars(bundle: ModelBundle, word: str, n: int, seed: int = 0,
                   photos: Optional[Sequence[Image.Image]] = None) -> list[Attack]:
    """``n`` varied renders of ``word`` in exemplar styles (never the evaluation's held-out ones),
    drawn from the model's world (or on ``photos``)."""
    rng = np.random.default_rng([seed + EXEMPLAR_SEED_OFFSET, _word_seed(word)])
    return world_of(bundle, photos).exemplars(word, n, rng)


def _word_seed(word: str) -> int:
    return int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "little")


def reference_statistics(bundle: ModelBundle, layer: str, config: DefenseConfig) -> KeyStatistics:
    """Key statistics of ``layer`` over the reference images (cached by model, layer and data):
    ``config.reference`` when given, else the model's world's reference images."""
    preprocess = bundle.preprocess
    if config.reference is not None:
        paths = image_paths(config.reference, "reference folder")
        data_key = files_key(paths) + repr(preprocess)
        batches = lambda: to_batches(LazyImages(paths), preprocess, 64)  # noqa: E731
    else:
        world = world_of(bundle, config.photos)
        n = config.n_reference or defaults_for(bundle).n_reference
        data_key = world.reference_key(n) + repr(preprocess)
        batches = lambda: to_batches(world.reference_images(n), preprocess, 64)  # noqa: E731
    stats = key_statistics(bundle.model, layer, batches, data_key=data_key, forward=bundle.encode_images)
    if config.reference is None and isinstance(world, PhotoWorld):  # said once the site has proved usable
        log.warning("no --reference images: key statistics from views of %s photos; pass --reference "
                    "for a real model", "the given" if config.photos else "scikit-image's sample")
    return stats


def defend(bundle: ModelBundle, words: str | Sequence[str] = "ipod", config: Optional[DefenseConfig] = None,
           exemplars: Optional[Sequence[Attack]] = None, request: Optional[EditRequest] = None) -> Defense:
    """Make ``bundle.model`` ignore the written ``words``, in place.

    Args:
        bundle: the model to defend (edited in place).
        words: the word(s) to defend against; several words make one joint edit; ``"*"``: any word
            (exemplars from a broad vocabulary, :mod:`clipedit.defenses.any_word`).
        config: method, layer, rank, renders …
        exemplars: rendered attacks to use instead of generating ``config.renders`` per word.
        request: a ready ``EditRequest`` (e.g. a real photo pair) instead of rendered exemplars.
    """
    words = [words] if isinstance(words, str) else list(words)
    if words == [ANY_WORD] and request is None and exemplars is None:
        from clipedit.defenses.any_word import defend_any_word  # it builds on this module

        return defend_any_word(bundle, config or DefenseConfig())
    config = (config or DefenseConfig()).resolved(bundle)
    if request is None:
        if exemplars is None:
            if not words:
                raise ClipeditError("no words to defend against")
            exemplars = [a for w in words
                         for a in text_exemplars(bundle, w, config.renders, config.seed, config.photos)]
        request = request_from_attacks(bundle.preprocess, exemplars, use_text_mask=config.mask == "text")
    result = run_method(bundle, request, config.method, config.hparams, config.finetune,
                        lambda layer: reference_statistics(bundle, layer, config), {"words": words})
    return Defense(layer=result.layer, method=result.method, words=words, edit=result.edit,
                   exemplars=list(exemplars or []), edit_set=result.edit_set, details=result.details)
