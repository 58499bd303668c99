"""Typographic attacks rendered on labelled photos: each photo gets words other than its own class."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from PIL import Image

from clipedit.attacks import Attack, StyleSampler, render_attack
from clipedit.data.classnames import normalize_name
from clipedit.errors import ClipeditError


def attacks_from_photos(images: Sequence[Image.Image], labels: Sequence[int], classnames: Sequence[str],
                        words: Sequence[str], per_image: Optional[int] = None, seed: int = 0,
                        sampler: Optional[StyleSampler] = None,
                        progress: bool = True) -> tuple[list[Attack], list[int]]:
    """Typographic attacks on photos: each photo gets words other than its own class name.

    Args:
        images: the photos.
        labels: class index (into ``classnames``) of each photo.
        classnames: class names (to recognise a photo's own name among ``words``).
        words: the words to write.
        per_image: None or 0: one render per word; N: N words drawn at random, each
            word once before any repeats.
        seed: seeds word choice, style and placement: equal arguments give equal renders.
        sampler: label styles; ``StyleSampler.heldout()`` by default.

    Returns:
        The attacks and the true label of each.

    Raises:
        ClipeditError: no words, or every word is the photo's own class.
    """
    from tqdm import tqdm

    if len(images) != len(labels):
        raise ClipeditError(f"got {len(images)} images but {len(labels)} labels")
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise ClipeditError("the word list is empty")
    sampler = sampler or StyleSampler.heldout()
    attacks: list[Attack] = []
    out_labels: list[int] = []
    bar = tqdm(range(len(images)), desc="rendering attacks", unit="photo", leave=False,
               disable=None if progress else True)  # None: shown on terminals only
    for i in bar:
        label = int(labels[i])
        own = normalize_name(classnames[label])
        candidates = [w for w in words if normalize_name(w) != own]
        rng = np.random.default_rng([seed, i])
        if per_image and candidates:
            candidates = _draw_words(candidates, per_image, rng)
        image = images[i]
        for word in candidates:
            style = sampler.sample(rng)
            attacks.append(render_attack(image, word, style, seed=int(rng.integers(2**31 - 1))))
            out_labels.append(label)
    if not attacks:
        raise ClipeditError("no attacks to render: every word is the class of its photo")
    return attacks, out_labels


def _draw_words(words: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` of ``words`` at random: every word once before any repeats."""
    order: list[int] = []
    while len(order) < k:
        order += rng.permutation(len(words)).tolist()
    return [words[i] for i in order[:k]]
