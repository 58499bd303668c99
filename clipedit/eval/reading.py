"""Reading kept where reading is the task: zero-shot accuracy on signs (a class name written alone,
no object) over the class names.

A defense that blinds a model to all writing and one that removes only the attack are different
products: the first drops this figure towards chance, the second keeps it. Signs are drawn by the
world when it can (``world.signs(n, seed)``, e.g. the mini world's backgrounds), else written on flat
canvases; either way in held-out note styles and from the split's own seed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import numpy as np
from PIL import Image

from clipedit.attacks import StyleSampler, render_attack
from clipedit.errors import ClipeditError
from clipedit.eval.heldout import split_seed
from clipedit.eval.metrics import evaluate_images
from clipedit.eval.predictor import Predictor
from clipedit.models.bundle import ModelBundle

#: Signs use the split's seed + 2 (the split's defended-word set uses its seed, other words seed + 1).
SIGN_SEED_OFFSET = 2


@dataclasses.dataclass
class SignSet:
    """Images of written class names and the class each one names."""

    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]


def sign_set(world, n: int, split: str = "test", classnames: Optional[Sequence[str]] = None,
             size: int = 224, offset: int = 0) -> SignSet:
    """``n`` signs of the split: the world's own (``world.signs``) when it draws them, else
    :func:`plain_signs` over ``classnames`` (default: the world's) at ``size`` pixels."""
    names = list(classnames or (world.classnames if world is not None else None) or [])
    if not names:
        raise ClipeditError("signs need class names to write")
    if n < 1:
        raise ClipeditError(f"the number of signs must be >= 1, got {n}")
    seed = split_seed(split) + SIGN_SEED_OFFSET + offset
    if world is not None and hasattr(world, "signs") and classnames is None:
        images, labels = world.signs(n, seed)
    else:
        images, labels = plain_signs(names, n, seed, size)
    return SignSet(list(images), list(labels), names)


def plain_signs(classnames: Sequence[str], n: int, seed: int, size: int = 224,
                sampler: Optional[StyleSampler] = None) -> tuple[list[Image.Image], list[int]]:
    """``n`` class names written on flat grey canvases (held-out styles), classes balanced."""
    sampler = sampler or StyleSampler.heldout(position="random", rotation=(-10.0, 10.0), perspective=(0.0, 0.1))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(classnames)).tolist()
    images = []
    for label in labels:
        shade = int(rng.integers(90, 240))
        canvas = Image.new("RGB", (size, size), (shade, shade, shade))
        images.append(render_attack(canvas, classnames[label], sampler.sample(rng),
                                    seed=int(rng.integers(2**31))).attacked)
    return images, labels


def reading_accuracy(bundle: ModelBundle, predictor: Predictor, signs: SignSet, batch_size: int = 128) -> float:
    """Top-1 zero-shot accuracy of ``predictor`` on the signs (the written class is the label)."""
    if list(predictor.classnames) != list(signs.classnames):
        raise ClipeditError("the predictor's classes are not the classes the signs were written with")
    return float(evaluate_images(bundle, predictor, signs.images, signs.labels, batch_size, progress=False)["top1"])
