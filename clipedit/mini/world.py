"""The mini world: procedurally drawn objects on varied backgrounds, with or without a note.

A scene is one object (one of ``CLASSNAMES``) drawn at a random size, position,
colour and tilt over a random background. Notes come from the attack renderer
(:mod:`attacks`), so the training set, the held-out figures and the attacks a
user renders all share one note generator.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from clipedit.attacks import Attack, StyleSampler, render_attack
from clipedit.attacks.factors import split_sampler
from clipedit.data.classnames import normalize_name
from clipedit.data.reference import images_key
from clipedit.data.scene_cache import cached_attacks, cached_images
from clipedit.errors import ClipeditError
from clipedit.mini.shapes import OBJECTS, background, random_colour

CLASSNAMES: tuple[str, ...] = tuple(OBJECTS)
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {}.",
)
IMAGE_SIZE: int = 64
_SUPERSAMPLE = 2  # draw at twice the size, then average down (anti-aliasing)
_RENDERER = ("clipedit.mini.world", "clipedit.mini.shapes")  # their source decides the pictures (cache keys)


@dataclasses.dataclass
class Scene:
    """One drawn object: the image, its class index and its box in pixels (x0, y0, x1, y1)."""

    image: Image.Image
    label: int
    object_box: tuple[int, int, int, int]


def draw_scene(rng: np.random.Generator, label: int | None = None, size: int = IMAGE_SIZE) -> Scene:
    """Draw one object of class ``label`` (random when None) over a random background."""
    if label is None:
        label = int(rng.integers(len(CLASSNAMES)))
    if not 0 <= label < len(CLASSNAMES):
        raise ValueError(f"label {label} is not in 0..{len(CLASSNAMES) - 1}")
    drawer, aspect = OBJECTS[CLASSNAMES[label]]
    big = size * _SUPERSAMPLE
    bg = background(rng, big)

    # Object box: its longer side covers 60-90% of the image, anywhere inside it.
    aspect *= float(np.exp(rng.normal(0, 0.1)))
    longest = rng.uniform(0.6, 0.9) * big
    w, h = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
    margin = 0.04 * big
    x0 = rng.uniform(margin, big - margin - w)
    y0 = rng.uniform(margin, big - margin - h)
    box = (x0, y0, x0 + w, y0 + h)

    colour = _contrasting_colour(rng, bg, box)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    drawer(ImageDraw.Draw(layer), box, rng, colour)
    angle = rng.uniform(-20, 20)
    if abs(angle) > 2:
        layer = layer.rotate(angle, resample=Image.BILINEAR, center=((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))

    image = Image.fromarray(bg).convert("RGBA")
    image.alpha_composite(layer)
    image = image.convert("RGB").reduce(_SUPERSAMPLE)
    bbox = layer.getchannel("A").point(lambda a: 255 if a > 96 else 0).getbbox() or (0, 0, big, big)
    object_box = (
        max(0, bbox[0] // _SUPERSAMPLE),
        max(0, bbox[1] // _SUPERSAMPLE),
        min(size, -(-bbox[2] // _SUPERSAMPLE)),
        min(size, -(-bbox[3] // _SUPERSAMPLE)),
    )
    return Scene(image=image, label=label, object_box=object_box)


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray, box) -> tuple[int, int, int]:
    """An object colour far enough from the background under the object's box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mean = bg[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    best, best_dist = None, -1.0
    for _ in range(8):
        colour = random_colour(rng)
        dist = float(np.linalg.norm(np.asarray(colour, np.float32) - mean))
        if dist > 110:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best  # type: ignore[return-value]


def note_sampler() -> StyleSampler:
    """Held-out note styles placed on the object: the default for :func:`attack_set`.

    The preset's fonts, inks and papers; its smallest font sizes and tight margins,
    so that the note sits on the object yet leaves most of it visible at 64x64. Writing is
    near-upright (within 10 degrees), as in the training world: the mini model never saw
    steeper writing and mostly fails to read it (at the preset's 25 degrees, attack success
    falls from 58% to 33%).
    """
    return StyleSampler.heldout(position="object", font_size=(0.19, 0.22), padding=(0.1, 0.25),
                                rotation=(-10.0, 10.0), perspective=(0.0, 0.1))


def attack_set(
    n: int,
    seed: int,
    *,
    words: str | Sequence[str] = "other",
    sampler: StyleSampler | None = None,
    size: int = IMAGE_SIZE,
) -> tuple[list[Attack], list[int]]:
    """``n`` scenes, each with one note whose word is never the scene's true class.

    Args:
        n: number of scenes; classes are balanced (``n`` need not be a multiple).
        seed: seeds everything, so equal arguments give equal pictures.
        words: ``"other"`` writes a random other class name; a word or a list of words
            writes one of them, drawing a scene of another class when the word is the class.
        sampler: note styles; :func:`note_sampler` (held-out styles) by default.
        size: image side in pixels.

    Returns:
        The attacks (``.clean``, ``.blank``, ``.attacked``, masks) and the true labels, rendered once per
        arguments and then read from the scene cache (:mod:`clipedit.data.scene_cache`).
    """
    vocab = None if isinstance(words, str) and words == "other" else [words] if isinstance(words, str) else list(words)
    if vocab is not None and (not vocab or not all(isinstance(w, str) and w.strip() for w in vocab)):
        raise ClipeditError("the list of words to write is empty or holds an empty word")
    sampler = sampler or note_sampler()
    args = {"n": n, "seed": seed, "words": vocab, "sampler": repr(sampler), "size": size}
    return cached_attacks("mini-world.attack_set", args, lambda: _render_attack_set(n, seed, vocab, sampler, size),
                          modules=_RENDERER)


def _render_attack_set(n: int, seed: int, vocab: Optional[list[str]], sampler: StyleSampler, size: int
                       ) -> tuple[list[Attack], list[int]]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSNAMES))
    attacks: list[Attack] = []
    true_labels: list[int] = []
    for label in tqdm(labels.tolist(), desc="rendering held-out scenes", unit="scene", leave=False, disable=None):
        if vocab is None:
            word = CLASSNAMES[(label + int(rng.integers(1, len(CLASSNAMES)))) % len(CLASSNAMES)]
        else:
            word = vocab[int(rng.integers(len(vocab)))]
            if normalize_name(word) == normalize_name(CLASSNAMES[label]):  # class matching ignores case
                label = (label + int(rng.integers(1, len(CLASSNAMES)))) % len(CLASSNAMES)
        scene = draw_scene(rng, label, size)
        style = sampler.sample(rng)
        attacks.append(render_attack(scene.image, word, style, seed=int(rng.integers(2**31)),
                                     object_box=scene.object_box))
        true_labels.append(label)
    return attacks, true_labels


#: How many of the mini world's reference images its cache key digests (every kind of scene, fonts included).
REFERENCE_KEY_SAMPLE = 24


def reference_images(n: int = 256, seed: int = 12345, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """A fixed mix of clean, blank-note and text-note scenes (for a layer's key statistics)."""
    rng = np.random.default_rng(seed)
    sampler = StyleSampler.exemplar()
    images = []
    for i in range(n):
        scene = draw_scene(rng, size=size)
        kind = i % 3
        if kind == 0:
            images.append(scene.image)
            continue
        word = CLASSNAMES[int(rng.integers(len(CLASSNAMES)))]
        attack = render_attack(scene.image, word, sampler.sample(rng), seed=int(rng.integers(2**31)),
                               object_box=scene.object_box)
        images.append(attack.blank if kind == 1 else attack.attacked)
    return images


class MiniWorld:
    """The mini world as a :class:`clipedit.data.worlds.World`: what ``--model mini`` defends and is tested on."""

    name = "mini-world"
    classnames = CLASSNAMES
    templates = TEMPLATES

    def exemplars(self, word: str, n: int, rng: np.random.Generator) -> list[Attack]:
        """Notes with ``word`` on objects of other classes, in exemplar styles."""
        sampler = StyleSampler.exemplar(position="object")
        others = [i for i, c in enumerate(CLASSNAMES) if normalize_name(c) != normalize_name(word)]
        out = []
        for _ in tqdm(range(n), desc="rendering exemplars", unit="render", leave=False, disable=None):
            scene = draw_scene(rng, others[int(rng.integers(len(others)))])
            out.append(render_attack(scene.image, word, sampler.sample(rng), seed=int(rng.integers(2**31)),
                                     object_box=scene.object_box))
        return out

    def reference_images(self, n: int) -> list[Image.Image]:
        return reference_images(n)

    def reference_key(self, n: int) -> str:
        """The count and a digest of the first :data:`REFERENCE_KEY_SAMPLE` reference images (drawn in
        sequence, so they are the first of any ``n``): a change of the scenes, the styles or the installed
        fonts changes the key, without rendering all ``n`` on a cache hit."""
        return f"mini-world-reference:n={n}:{images_key(reference_images(min(n, REFERENCE_KEY_SAMPLE)))}"

    def attack_set(self, n: int, seed: int, words: str | Sequence[str] = "other", split: Optional[str] = None,
                   fonts: Optional[tuple[str, ...]] = None, sampler: StyleSampler | None = None
                   ) -> tuple[list[Attack], list[int]]:
        """Scenes with notes. Styles: ``sampler`` when given (e.g. a training split's); else ``split``'s
        leave-out factors (:mod:`attacks.factors`) on the world's note geometry (``fonts`` in place of the
        split's); else the world's own held-out styles (:func:`note_sampler`)."""
        if sampler is None and split:
            sampler = split_sampler(split, note_sampler(), fonts=fonts)
        return attack_set(n, seed, words=words, sampler=sampler)

    def sign_exemplars(self, classnames: Sequence[str], n: int, rng: np.random.Generator) -> list[Attack]:
        """``n`` signs to keep as they are (``keep_reading``): class names written on bare backgrounds (no
        object), anywhere in the picture, in exemplar styles (never the held-out ones), classes balanced."""
        sampler = StyleSampler.exemplar(position="random")
        labels = rng.permutation(np.arange(n) % len(classnames)).tolist()
        return [render_attack(background(rng, IMAGE_SIZE), classnames[label], sampler.sample(rng),
                              seed=int(rng.integers(2**31))) for label in labels]

    def signs(self, n: int, seed: int) -> tuple[list[Image.Image], list[int]]:
        """``n`` signs: a class name written on a bare background (no object), in held-out note
        styles anywhere in the picture; labelled by the written class (balanced)."""
        sampler = dataclasses.replace(note_sampler(), position="random")

        def render():
            rng = np.random.default_rng(seed)
            labels = rng.permutation(np.arange(n) % len(CLASSNAMES)).tolist()
            images = [render_attack(background(rng, IMAGE_SIZE), CLASSNAMES[label], sampler.sample(rng),
                                    seed=int(rng.integers(2**31))).attacked for label in labels]
            return images, labels

        args = {"n": n, "seed": seed, "sampler": repr(sampler), "size": IMAGE_SIZE}
        return cached_images("mini-world.signs", args, render, modules=_RENDERER)
