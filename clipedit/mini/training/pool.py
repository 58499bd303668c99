"""The mini model's training pool: pre-rendered scenes with their caption ingredients.

Rendering is the slow part (a few ms an image), so a pool of a few tens of
thousands of images is rendered once; training reuses it with cheap shifts and
colour jitter, and draws a fresh caption for every use.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from clipedit.attacks import LabelStyle, render_attack
from clipedit.attacks.fonts import mpl_font_dir
from clipedit.mini.shapes import background
from clipedit.mini.training.captions import DISTRACTOR_WORDS, CaptionMix, caption, word_caption
from clipedit.mini.world import CLASSNAMES, IMAGE_SIZE, draw_scene

log = logging.getLogger(__name__)

CLEAN, BLANK, TEXT, SIGN = 0, 1, 2, 3


@dataclass(frozen=True)
class PoolMix:
    """Share of each kind of training image, and of notes with a non-class word.

    Attributes:
        clean: an object, no note.
        blank: an object with a note without writing.
        sign: a note with a word on a bare background (no object), captioned by the word.
        distractor: among written notes, the share writing a word that is no class name.
        true_word: among notes on objects, the share writing the object's own name.
        The rest are objects with a written note.
    """

    clean: float = 0.2
    blank: float = 0.15
    sign: float = 0.25
    distractor: float = 0.05
    true_word: float = 0.1

    @property
    def probabilities(self) -> list[float]:
        """Probabilities of CLEAN, BLANK, TEXT and SIGN."""
        return [self.clean, self.blank, 1 - self.clean - self.blank - self.sign, self.sign]


@dataclass
class Pool:
    """Rendered images (N, H, W, 3) uint8 with per-image kind, label and written word.

    Signs have no object: their label is -1 and their captions name only the word.
    """

    images: np.ndarray
    kinds: np.ndarray
    labels: np.ndarray
    words: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)

    def captions(self, index: np.ndarray, rng: np.random.Generator, mix: CaptionMix) -> list[str]:
        """A freshly drawn caption for each image in ``index``."""
        return [word_caption(rng, self.words[i]) if self.kinds[i] == SIGN else
                caption(rng, CLASSNAMES[self.labels[i]], self.words[i], self.kinds[i] == BLANK, mix)
                for i in index.tolist()]


def training_fonts() -> list[str | None]:
    """Matplotlib's fonts with Latin letters (None: the renderer's default DejaVuSans)."""
    fonts = sorted(str(p) for p in mpl_font_dir().glob("*.ttf")
                   if p.name.startswith(("DejaVu", "STIXGeneral", "cmr", "cmss", "cmtt", "cmb", "cmti"))
                   and "Display" not in p.name)  # Display fonts hold no Latin letters
    return [None, *fonts]


def training_style(rng: np.random.Generator, fonts: list[str | None]) -> LabelStyle:
    """A broad random note style, like the writing met in web photos."""
    kind = ("note", "sticker", "text")[int(rng.choice(3, p=[0.4, 0.25, 0.35]))]
    light = tuple(int(v) for v in rng.integers(200, 256, 3))
    dark = tuple(int(v) for v in rng.integers(0, 90, 3))
    text_color, note_color = (dark, light) if rng.random() < 0.85 else (light, dark)
    if kind == "text" and rng.random() < 0.6:  # bare text in a mid-dark or vivid colour
        hi = 256 if rng.random() < 0.4 else 160
        text_color = tuple(int(v) for v in rng.integers(0, hi, 3))
    return LabelStyle(
        kind=kind,
        font=fonts[int(rng.integers(len(fonts)))],
        font_size=float(rng.uniform(0.18, 0.28)),
        text_color=text_color,
        note_color=note_color,
        position="object" if rng.random() < 0.8 else "random",
        rotation=0.0,  # upright, flat writing: a small model learns to read it far sooner
        perspective=0.0,
        padding=float(rng.uniform(0.1, 0.45)),
        bold=bool(rng.random() < 0.3),
        shrink_to_fit=True,
    )


def build_pool(n: int, seed: int, mix: PoolMix = PoolMix(), size: int = IMAGE_SIZE) -> Pool:
    """Render ``n`` training images (seeded) in the proportions of ``mix``."""
    rng = np.random.default_rng(seed)
    fonts = training_fonts()
    images = np.empty((n, size, size, 3), np.uint8)
    kinds = rng.choice(4, size=n, p=mix.probabilities)
    labels = np.empty(n, np.int64)
    words: list[str | None] = []
    for i in tqdm(range(n), desc="rendering training pool", mininterval=5, leave=False):
        if kinds[i] == SIGN:
            images[i], word = _sign(rng, fonts, mix, size)
            labels[i] = -1
            words.append(word)
            continue
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
    log.info("rendered %d training images (%.0f%% clean, %.0f%% blank note, %.0f%% text note, %.0f%% sign)", n,
             *(100 * np.mean(kinds == k) for k in (CLEAN, BLANK, TEXT, SIGN)))
    return Pool(images=images, kinds=kinds, labels=labels, words=words)


def _sign(rng: np.random.Generator, fonts: list[str | None], mix: PoolMix, size: int) -> tuple[np.ndarray, str]:
    """A written note on a bare background, and its word."""
    if rng.random() < mix.distractor:
        word = DISTRACTOR_WORDS[int(rng.integers(len(DISTRACTOR_WORDS)))]
    else:
        word = CLASSNAMES[int(rng.integers(len(CLASSNAMES)))]
    style = dataclasses.replace(training_style(rng, fonts), position="random")
    attack = render_attack(background(rng, size), word, style, seed=int(rng.integers(2**31)))
    return np.asarray(attack.attacked), word


def _note_word(rng: np.random.Generator, label: int, mix: PoolMix) -> str:
    u = rng.random()
    if u < mix.distractor:
        return DISTRACTOR_WORDS[int(rng.integers(len(DISTRACTOR_WORDS)))]
    if u < mix.distractor + mix.true_word:
        return CLASSNAMES[label]
    return CLASSNAMES[(label + int(rng.integers(1, len(CLASSNAMES)))) % len(CLASSNAMES)]
