"""render_batch: many varied renders of one word."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .errors import AttackError
from .render import Attack, render_attack
from .sampler import StyleSampler


def render_batch(
    images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
    text: str,
    n: int,
    *,
    seed: int = 0,
    sampler: StyleSampler | None = None,
    object_boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
) -> list[Attack]:
    """Render ``text`` ``n`` times, on image ``i % len(images)`` with a style drawn by ``sampler``.

    Render ``i`` depends only on ``(seed, i)``, not on ``n``; its ``seed`` field reproduces it
    with ``render_attack(image, text, attack.style, seed=attack.seed, object_box=...)``.

    Args:
        images: One image or a sequence of them.
        text: The word.
        n: Number of renders.
        seed: Base seed (non-negative).
        sampler: Style ranges; defaults to ``StyleSampler()``.
        object_boxes: One box (or None) per image, for position "object".
    """
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    images = list(images)
    if not images:
        raise AttackError("render_batch needs at least one image")
    if n < 0:
        raise AttackError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise AttackError(f"seed must be >= 0, got {seed}")
    if object_boxes is not None and len(object_boxes) != len(images):
        raise AttackError(f"got {len(object_boxes)} object boxes for {len(images)} images")
    sampler = sampler if sampler is not None else StyleSampler()
    attacks = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        style = sampler.sample(rng)
        render_seed = int(rng.integers(2**31 - 1))
        k = i % len(images)
        box = object_boxes[k] if object_boxes is not None else None
        attacks.append(render_attack(images[k], text, style, seed=render_seed, object_box=box))
    return attacks
