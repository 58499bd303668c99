"""Worlds: where a model's exemplars, reference images and held-out scenes come from.

A model bundle carries its world (``bundle.world``): the bundled mini CLIP carries the generated
mini world (:class:`clipedit.mini.world.MiniWorld`); any other model is given a :class:`PhotoWorld`
over photographs (by default scikit-image's samples). Defenses and evaluations ask the world and
never test a model's name.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from clipedit.attacks import Attack, StyleSampler, render_attack
from clipedit.attacks.factors import split_sampler
from clipedit.data.classnames import normalize_name
from clipedit.data.reference import default_reference, images_key, photo_views, sample_photos
from clipedit.errors import ClipeditError


@runtime_checkable
class World(Protocol):
    """A source of scenes to write words on.

    Attributes:
        name: names the world in results records (``dataset``) and cache keys.
        classnames: its classes (None for unlabelled photos).
        templates: prompt templates that suit it (None: the model's).
    """

    name: str
    classnames: Optional[Sequence[str]]
    templates: Optional[Sequence[str]]

    def exemplars(self, word: str, n: int, rng: np.random.Generator) -> list[Attack]:
        """``n`` renders of ``word`` in exemplar styles (never the held-out ones)."""

    def reference_images(self, n: int) -> Sequence[Image.Image]:
        """About ``n`` ordinary images for the key statistics."""

    def reference_key(self, n: int) -> str:
        """A cache key for ``reference_images(n)``."""

    def attack_set(self, n: int, seed: int, words: Sequence[str] | str = "other", split: Optional[str] = None,
                   fonts: Optional[tuple[str, ...]] = None) -> tuple[list[Attack], list[int]]:
        """``n`` held-out attacks (the leave-out factors of ``split``, :mod:`attacks.factors`; None: the
        world's own held-out styles) and true labels; raises ClipeditError if it has none."""


class PhotoWorld:
    """Photographs with no labels: exemplars are rendered on them; views of them are the reference."""

    name = "photos"
    classnames = None
    templates = None
    #: Reference views come from photographs (not a model's own world): a real model wants --reference.
    from_photos = True

    def __init__(self, photos: Optional[Sequence[Image.Image]] = None) -> None:
        self._photos = list(photos) if photos else None
        self._reference: dict[int, list[Image.Image]] = {}

    @property
    def source(self) -> str:
        """Where the photos come from, in words (for messages)."""
        return "scikit-image's sample photos" if self._photos is None else "the given photos"

    @property
    def photos(self) -> list[Image.Image]:
        if self._photos is None:
            self._photos = sample_photos()
        return self._photos

    def exemplars(self, word: str, n: int, rng: np.random.Generator) -> list[Attack]:
        sampler = StyleSampler.exemplar()
        photos = self.photos
        return [render_attack(photos[i % len(photos)], word, sampler.sample(rng), seed=int(rng.integers(2**31)))
                for i in range(n)]

    def reference_images(self, n: int) -> list[Image.Image]:
        """Seeded views of the photos (the default reference for scikit-image's samples)."""
        if n not in self._reference:
            self._reference[n] = default_reference() if self._photos is None else \
                photo_views(self.photos, max(1, -(-n // len(self.photos))), seed=0)
        return self._reference[n]

    def reference_key(self, n: int) -> str:
        return f"photos:{images_key(self.reference_images(n))}"

    def attack_set(self, n: int, seed: int, words: Sequence[str] | str = "other", split: Optional[str] = None,
                   fonts: Optional[tuple[str, ...]] = None):
        raise ClipeditError("unlabelled photos have no held-out scenes: pass --data DIR (an ImageFolder) "
                            "or --dataset KIND:PATH to evaluate on")


class LabelledPhotoWorld(PhotoWorld):
    """Labelled photographs (one side of a user's data split, :mod:`clipedit.data.splits`): exemplars,
    reference views and held-out notes are rendered on them.

    ``attack_set`` with a ``sampler`` (a training split's or scoring images' styles) draws ``n`` scenes,
    each photo once before any repeats; without one (a held-out set: the split's leave-out factors, else
    the held-out styles) it shows each photo at most once, so a held-out set has at most one scene per
    photo and its intervals count photos, not repeats.
    """

    templates = None

    def __init__(self, name: str, photos: Sequence[Image.Image], labels: Sequence[int],
                 classnames: Sequence[str]) -> None:
        super().__init__(None)
        if not photos or len(photos) != len(labels):
            raise ClipeditError(f"{name}: {len(photos)} photos for {len(labels)} labels")
        self._photos = photos  # kept as given (a LazyImages reads each file when indexed)
        self.name = name
        self.labels = [int(x) for x in labels]
        self.classnames = list(classnames)

    @property
    def source(self) -> str:
        return f"the photos of {self.name}"

    def attack_set(self, n: int, seed: int, words: Sequence[str] | str = "other", split: Optional[str] = None,
                   fonts: Optional[tuple[str, ...]] = None, sampler: Optional[StyleSampler] = None
                   ) -> tuple[list[Attack], list[int]]:
        vocab = None if isinstance(words, str) and words == "other" else [words] if isinstance(words, str) \
            else list(words)
        if vocab is not None and (not vocab or not all(isinstance(w, str) and w.strip() for w in vocab)):
            raise ClipeditError("the list of words to write is empty or holds an empty word")
        held_out = sampler is None
        if sampler is None:
            sampler = split_sampler(split, fonts=fonts) if split else StyleSampler.heldout()
        rng = np.random.default_rng(seed)
        photos, count = self.photos, n if not held_out else min(n, len(self.photos))
        attacks: list[Attack] = []
        labels: list[int] = []
        passes = 0
        while len(attacks) < count and passes < (1 if held_out else max(1, -(-n // len(photos))) + 1):
            passes += 1
            for i in rng.permutation(len(photos)).tolist():
                if len(attacks) >= count:
                    break
                label = self.labels[i]
                own = normalize_name(self.classnames[label])
                candidates = [w for w in (vocab or self.classnames) if normalize_name(w) != own]
                if not candidates:
                    continue  # the only word is this photo's class: no attack on it
                word = candidates[int(rng.integers(len(candidates)))]
                attacks.append(render_attack(photos[i], word, sampler.sample(rng), seed=int(rng.integers(2**31))))
                labels.append(label)
        if not attacks:
            raise ClipeditError(f"{self.name}: no photo to write {', '.join(vocab or ['another class'])} on "
                                "(every photo is of that class)")
        return attacks, labels
