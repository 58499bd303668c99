"""Defend a CLIP model against written words: build exemplars, rewrite one layer, report the effect.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")          # edits bundle.model in place
    clipedit.save_edit("ipod.safetensors", defense.edit)
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
from PIL import Image

from attacks import Attack, StyleSampler, render_attack

from .datasets import IMAGE_EXTENSIONS, LazyImages, to_batches
from .errors import ClipeditError
from .models.bundle import ModelBundle
from .requests import request_from_attacks
from .methods import run_method
from .reference import default_reference, sample_photos
from .rewrite import EditRequest, KeyStatistics, LayerEdit, RewriteHParams, key_statistics
from .rewrite.finetune import FinetuneHParams

log = logging.getLogger(__name__)

EXEMPLAR_SEED_OFFSET = 1_000  # exemplar renders never share a seed with evaluation sets


@dataclass
class DefenseConfig:
    """How to defend.

    Attributes:
        method: ``edit`` (the rewrite) or a fine-tuning baseline on the same exemplars.
        renders: exemplars rendered per word (varied font, size, colour, position, object).
        mask: edit the locations of the glyphs (``text``) or of the whole label (``label``).
        reference: folder of reference images for the key statistics (default: the mini world's
            reference set for ``mini``, else the exemplars' photos).
        n_reference: reference images generated for ``mini``.
        photos: photos to render exemplars on (non-mini models; default: scikit-image samples).
    """

    method: Literal["edit", "finetune-local", "finetune-global"] = "edit"
    hparams: RewriteHParams = field(default_factory=lambda: RewriteHParams(rank=32))
    renders: int = 128
    seed: int = 0
    mask: Literal["text", "label"] = "text"
    reference: Optional[Path] = None
    n_reference: int = 512
    photos: Optional[Sequence[Image.Image]] = None
    finetune: FinetuneHParams = field(default_factory=FinetuneHParams)


@dataclass
class Defense:
    """The outcome: the edit (``method="edit"``) and what was used to make it."""

    layer: str
    method: str
    words: list[str]
    edit: Optional[LayerEdit]
    exemplars: list[Attack]


def text_exemplars(bundle: ModelBundle, word: str, n: int, seed: int = 0,
                   photos: Optional[Sequence[Image.Image]] = None) -> list[Attack]:
    """``n`` varied renders of ``word`` (exemplar styles, never the evaluation's held-out ones).

    On ``mini`` the word is written on notes on generated objects; otherwise on ``photos``
    (default: scikit-image's sample photographs).
    """
    rng = np.random.default_rng([seed + EXEMPLAR_SEED_OFFSET, _word_seed(word)])
    if bundle.name == "mini":
        from .mini import world

        sampler = StyleSampler.exemplar(position="object")
        out = []
        for _ in range(n):
            label = _other_class(rng, world.CLASSNAMES, word)
            scene = world.draw_scene(rng, label)
            out.append(render_attack(scene.image, word, sampler.sample(rng), seed=int(rng.integers(2**31)),
                                     object_box=scene.object_box))
        return out
    photos = list(photos) if photos else sample_photos()
    sampler = StyleSampler.exemplar()
    return [render_attack(photos[i % len(photos)], word, sampler.sample(rng), seed=int(rng.integers(2**31)))
            for i in range(n)]


def _word_seed(word: str) -> int:
    return int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "little")


def _other_class(rng: np.random.Generator, classnames: Sequence[str], word: str) -> int:
    choices = [i for i, c in enumerate(classnames) if c.lower() != word.lower()]
    return int(choices[int(rng.integers(len(choices)))])


def reference_statistics(bundle: ModelBundle, layer: str, config: DefenseConfig,
                         request: EditRequest) -> KeyStatistics:
    """Key statistics of ``layer`` over the reference images (cached by model, layer and data).

    Without ``config.reference`` (and not on ``mini``) they come from views of scikit-image's sample
    photos plus the exemplars themselves: enough to run, too few for a good estimate on a real model.
    """
    preprocess = bundle.preprocess
    if config.reference is not None:
        paths = _image_paths(config.reference)
        data_key = _files_key(paths) + repr(preprocess)
        batches = lambda: to_batches(LazyImages(paths), preprocess, 64)  # noqa: E731
    elif bundle.name == "mini":
        from .mini import world

        data_key = f"mini-world-reference:n={config.n_reference}:" + repr(preprocess)
        batches = lambda: to_batches(world.reference_images(config.n_reference), preprocess, 64)  # noqa: E731
    else:
        log.warning("no --reference images: key statistics from scikit-image samples and the exemplars")
        data_key = None

        def batches():
            yield from to_batches(default_reference(), preprocess, 64)
            yield request.attacked
            yield request.target
    return key_statistics(bundle.model, layer, batches, data_key=data_key, forward=bundle.encode_images)


def _image_paths(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipeditError(f"reference folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ClipeditError(f"no images in reference folder {folder}")
    return paths


def _files_key(paths: Sequence[Path]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def defend(bundle: ModelBundle, words: str | Sequence[str] = "ipod", config: Optional[DefenseConfig] = None,
           exemplars: Optional[Sequence[Attack]] = None, request: Optional[EditRequest] = None) -> Defense:
    """Make ``bundle.model`` ignore the written ``words``, in place.

    Args:
        bundle: the model to defend (edited in place).
        words: the word(s) to defend against; several words make one joint edit.
        config: method, layer, rank, renders …
        exemplars: rendered attacks to use instead of generating ``config.renders`` per word.
        request: a ready ``EditRequest`` (e.g. a real photo pair) instead of rendered exemplars.
    """
    config = config or DefenseConfig()
    words = [words] if isinstance(words, str) else list(words)
    if request is None:
        if exemplars is None:
            if not words:
                raise ClipeditError("no words to defend against")
            exemplars = [a for w in words for a in text_exemplars(bundle, w, config.renders, config.seed, config.photos)]
        request = request_from_attacks(bundle.preprocess, exemplars, use_text_mask=config.mask == "text")
    result = run_method(bundle, request, config.method, config.hparams, config.finetune,
                        lambda layer: reference_statistics(bundle, layer, config, request), {"words": words})
    return Defense(layer=result.layer, method=result.method, words=words, edit=result.edit,
                   exemplars=list(exemplars or []))
