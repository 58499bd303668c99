"""The mini model's training pool: pre-rendered scenes with their caption ingredients.

Rendering is the slow part (a few ms an image), so a pool of a few tens of
thousands of images is rendered once; training reuses it with cheap shifts and
colour jitter, and draws a fresh caption for every use.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from attacks import LabelStyle, render_attack
from attacks.fonts import mpl_font_dir

from .captions import DISTRACTOR_WORDS, CaptionMix, caption
from .world import CLASSNAMES, IMAGE_SIZE, draw_scene

log = logging.getLogger(__name__)

CLEAN, BLANK, TEXT = 0, 1, 2


@dataclass(frozen=True)
class PoolMix:
    """Share of each kind of training image, and of notes with a non-class word.

    Attributes:
        clean: no note.
        blank: a note without writing.
        distractor: among text notes, the share writing a word that is no class name.
        true_word: among text notes, the share writing the object's own name.
    """

    clean: float = 0.3
    blank: float = 0.2
    distractor: float = 0.15
    true_word: float = 0.1


@dataclass
class Pool:
    """Rendered images (N, H, W, 3) uint8 with per-image kind, label and written word."""

    images: np.ndarray
    kinds: np.ndarray
    labels: np.ndarray
    words: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)

    def captions(self, index: np.ndarray, rng: np.random.Generator, mix: CaptionMix) -> list[str]:
        """A freshly drawn caption for each image in ``index``."""
        return [caption(rng, CLASSNAMES[self.labels[i]], self.words[i], self.kinds[i] == BLANK, mix)
                for i in index.tolist()]


def training_fonts() -> list[str | None]:
    """Matplotlib's fonts with Latin letters (None: the renderer's default DejaVuSans)."""
    fonts = sorted(str(p) for p in mpl_font_dir().glob("*.ttf")
                   if p.name.startswith(("DejaVu", "STIXGeneral", "cmr", "cmss", "cmtt", "cmb", "cmti"))
                   and "Display" not in p.name)  # Display fonts hold no Latin letters
    return [None, *fonts]


def training_style(rng: np.random.Generator, fonts: list[str | None]) -> LabelStyle:
    """A broad random note style, like the writing met in web photos."""
    kind = ("note", "sticker", "text")[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    light = tuple(int(v) for v in rng.integers(200, 256, 3))
    dark = tuple(int(v) for v in rng.integers(0, 90, 3))
    text_color, note_color = (dark, light) if rng.random() < 0.85 else (light, dark)
    if kind == "text" and rng.random() < 0.5:  # bare text in a vivid colour
        text_color = tuple(int(v) for v in rng.integers(0, 256, 3))
    return LabelStyle(
        kind=kind,
        font=fonts[int(rng.integers(len(fonts)))],
        font_size=float(rng.uniform(0.1, 0.24)),
        text_color=text_color,
        note_color=note_color,
        position="object" if rng.random() < 0.8 else "random",
        rotation=float(rng.normal(0, 8)),
        perspective=float(rng.uniform(0, 0.2)),
        padding=float(rng.uniform(0.1, 0.45)),
        bold=bool(rng.random() < 0.3),
        shrink_to_fit=True,
    )


def build_pool(n: int, seed: int, mix: PoolMix = PoolMix(), size: int = IMAGE_SIZE) -> Pool:
    """Render ``n`` training images (seeded) in the proportions of ``mix``."""
    rng = np.random.default_rng(seed)
    fonts = training_fonts()
    images = np.empty((n, size, size, 3), np.uint8)
    kinds = rng.choice(3, size=n, p=[mix.clean, mix.blank, 1 - mix.clean - mix.blank])
    labels = np.empty(n, np.int64)
    words: list[str | None] = []
    for i in tqdm(range(n), desc="rendering training pool", mininterval=5, leave=False):
        scene = draw_scene(rng, size=size)
        labels[i] = scene.label
        if kinds[i] == CLEAN:
            images[i] = np.asarray(scene.image)
            words.append(None)
            continue
        word = _note_word(rng, scene.label, mix)
        attack = render_attack(scene.image, word, training_style(rng, fonts), seed=int(rng.integers(2**31)),
                               object_box=scene.object_box)
        images[i] = np.asarray(attack.blank if kinds[i] == BLANK else attack.attacked)
        words.append(None if kinds[i] == BLANK else word)
    log.info("rendered %d training images (%.0f%% clean, %.0f%% blank note, %.0f%% text note)", n,
             100 * np.mean(kinds == CLEAN), 100 * np.mean(kinds == BLANK), 100 * np.mean(kinds == TEXT))
    return Pool(images=images, kinds=kinds, labels=labels, words=words)


def _note_word(rng: np.random.Generator, label: int, mix: PoolMix) -> str:
    u = rng.random()
    if u < mix.distractor:
        return DISTRACTOR_WORDS[int(rng.integers(len(DISTRACTOR_WORDS)))]
    if u < mix.distractor + mix.true_word:
        return CLASSNAMES[label]
    return CLASSNAMES[(label + int(rng.integers(1, len(CLASSNAMES)))) % len(CLASSNAMES)]
