"""Exemplars and reference images of a typographic defense, drawn from the model's world (or given photos), and
exemplars (rendered attacks or real photo pairs) turned into the rewrite core's ``EditRequest``."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from PIL import Image

from clipedit.attacks import Attack, StyleSampler, render_attack
from clipedit.core import EditRequest, KeepRequest, KeyStatistics, key_statistics
from clipedit.data.folders import files_key, image_paths
from clipedit.data.images import LazyImages, to_batches
from clipedit.data.worlds import PhotoWorld, World
from clipedit.errors import ClipeditError, EditError, render_errors
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig

log = logging.getLogger(__name__)


EXEMPLAR_SEED_OFFSET = 1_000  # exemplar renders never share a seed with evaluation sets
#: Signs a ``keep_reading`` edit keeps (every class name in turn); their weight is normalised to the exemplars'.
N_SIGNS = 128
SIGN_CANVAS = 224  # side of the flat canvases signs are written on when the world draws none


def world_of(bundle: ModelBundle, photos: Optional[Sequence[Image.Image]] = None) -> World:
    """The world exemplars are drawn from: ``photos`` when given, else the model's, else scikit-image photos."""
    if photos:
        return PhotoWorld(photos)
    return bundle.world or PhotoWorld()


@render_errors()  # a word that cannot be rendered: a ClipeditError from the public API, not an AttackError
def text_exemplars(bundle: ModelBundle, word: str, n: int, seed: int = 0,
                   photos: Optional[Sequence[Image.Image]] = None) -> list[Attack]:
    """``n`` varied renders of ``word`` in exemplar styles (never the evaluation's held-out ones),
    drawn from the model's world (or on ``photos``)."""
    rng = np.random.default_rng([seed + EXEMPLAR_SEED_OFFSET, _word_seed(word)])
    return world_of(bundle, photos).exemplars(word, n, rng)


@render_errors()
def sign_exemplars(bundle: ModelBundle, n: int = N_SIGNS, seed: int = 0,
                   photos: Optional[Sequence[Image.Image]] = None) -> list[Attack]:
    """``n`` signs for ``keep_reading``: the model's class names written alone (no object) in exemplar styles,
    never the evaluation's held-out ones, from an exemplar seed (never an evaluation sign's): drawn by the
    world when it can (``world.sign_exemplars``, e.g. on the mini world's backgrounds), else on flat grey
    canvases. Classes balanced.

    Raises:
        ClipeditError: the model has no class names to write.
    """
    world = world_of(bundle, photos)
    names = list(bundle.classnames or getattr(world, "classnames", None) or [])
    if not names:
        raise ClipeditError(f"keep_reading writes the class names as signs; {bundle.name} has none (give "
                            "class names, e.g. --data or --classes)")
    if n < 1:
        raise ClipeditError(f"the number of signs must be >= 1, got {n}")
    rng = np.random.default_rng([seed + EXEMPLAR_SEED_OFFSET, _word_seed("\0signs")])
    if hasattr(world, "sign_exemplars"):
        return world.sign_exemplars(names, n, rng)
    sampler = StyleSampler.exemplar(position="random")
    labels = rng.permutation(np.arange(n) % len(names)).tolist()
    out = []
    for label in labels:
        shade = int(rng.integers(90, 240))
        canvas = Image.new("RGB", (SIGN_CANVAS, SIGN_CANVAS), (shade, shade, shade))
        out.append(render_attack(canvas, names[label], sampler.sample(rng), seed=int(rng.integers(2**31))))
    return out


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
        n = config.n_reference
        if n is None:
            raise ClipeditError("reference_statistics: n_reference is unset (resolve_config fills it)")
        data_key = world.reference_key(n) + repr(preprocess)
        batches = lambda: to_batches(world.reference_images(n), preprocess, 64)  # noqa: E731
    stats = key_statistics(bundle.model, layer, batches, data_key=data_key, forward=bundle.encode_images)
    if config.reference is None and getattr(world, "from_photos", False):  # said once the site has proved usable
        log.warning("no --reference images: key statistics from views of %s; pass --reference "
                    "for a real model", "the given photos" if config.photos else world.source)
    return stats


def preprocess_mask(preprocess: Callable[[Image.Image], torch.Tensor], mask: np.ndarray) -> torch.Tensor:
    """Send a pixel mask through an image's preprocessing (resize, crop …): (H', W') in [0, 1].

    The mask is preprocessed as a grey image and the normalisation undone, so the geometry always
    matches the image's, whatever transforms the model's preprocessing holds.
    """
    grey = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).convert("RGB")
    x = preprocess(grey)
    mean, std = _normalisation(preprocess)
    if mean is not None:
        x = x * torch.as_tensor(std, dtype=x.dtype)[:, None, None] + torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    return x[0].clamp(0, 1)


def _normalisation(preprocess) -> tuple:
    for t in getattr(preprocess, "transforms", ()):
        if type(t).__name__ == "Normalize":
            return t.mean, t.std
    return None, None


def request_from_images(preprocess: Callable, attacked: Sequence[Image.Image], target: Sequence[Image.Image],
                        masks: Sequence[np.ndarray]) -> EditRequest:
    """An ``EditRequest`` from PIL exemplar pairs and their label masks (same size per pair)."""
    if not (len(attacked) == len(target) == len(masks)) or not attacked:
        raise EditError("need the same, non-zero number of attacked images, targets and masks")
    for i, (a, t, m) in enumerate(zip(attacked, target, masks)):
        if a.size != t.size:
            raise EditError(f"exemplar {i}: attacked image {a.size[0]}x{a.size[1]} and blank image "
                            f"{t.size[0]}x{t.size[1]} differ in size")
        if np.asarray(m).shape != (a.size[1], a.size[0]):
            raise EditError(f"exemplar {i}: mask {np.asarray(m).shape[1::-1]} does not match the image "
                            f"{a.size[0]}x{a.size[1]}")
        if not np.asarray(m).any():
            raise EditError(f"exemplar {i}: the mask is empty")
    return EditRequest(attacked=torch.stack([preprocess(a) for a in attacked]),
                       target=torch.stack([preprocess(t) for t in target]),
                       mask=torch.stack([preprocess_mask(preprocess, m) for m in masks]))


def request_from_attacks(preprocess: Callable, attacks: Sequence, use_text_mask: bool = True) -> EditRequest:
    """An ``EditRequest`` from rendered attacks: attacked -> blank at the glyphs (or the whole label)."""
    return request_from_images(preprocess, [a.attacked for a in attacks], [a.blank for a in attacks],
                               [a.text_mask if use_text_mask else a.mask for a in attacks])


def keep_request_from_attacks(preprocess: Callable, attacks: Sequence, use_text_mask: bool = True) -> KeepRequest:
    """A ``KeepRequest`` from rendered signs: their written images, kept at the glyphs (or the whole label)."""
    if not attacks:
        raise EditError("no signs to keep")
    return KeepRequest(images=torch.stack([preprocess(a.attacked) for a in attacks]),
                       mask=torch.stack([preprocess_mask(preprocess, a.text_mask if use_text_mask else a.mask)
                                         for a in attacks]))
