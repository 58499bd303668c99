"""The typographic *training* split the training-based peers share (Dyslexify's greedy search, PAINT's θ₁,
Defense-Prefix's token): scenes of the model's world, each with a random *other* class's name at a
random position, in exemplar styles (never the held-out styles of the validation and test splits), from
seeds of their own (``TRAIN_SEED``; :mod:`clipedit.eval.heldout` holds the validation/test seeds).

This mirrors the published training sets: Dyslexify's ImageNet-100 train split with
``position="random"`` and a random other class name (lowlorenz/dyslexify ``dyslexify/dataset/utils.py``
``create_typographic_attack_image``; ``experiments/greedy_selection/greedy_selection.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from clipedit.attacks import StyleSampler
from clipedit.data.images import to_batches
from clipedit.errors import ClipeditError
from clipedit.eval.heldout import SPLITS
from clipedit.eval.predictor import Predictor
from clipedit.models.bundle import ModelBundle

#: Seed of the typographic training split (seed ``s`` of a method uses ``TRAIN_SEED + s``).
TRAIN_SEED = 7_919
assert TRAIN_SEED not in SPLITS.values()


@dataclass
class TypoSet:
    """Preprocessed images of one split: the clean scene and the same scene with the note, and labels."""

    clean: torch.Tensor
    attacked: torch.Tensor
    labels: torch.Tensor
    words: list[str]
    classnames: list[str]

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


def typographic_training_set(bundle: ModelBundle, n: int, seed: int = 0, position="random") -> TypoSet:
    """``n`` training scenes of the bundle's world with a random other class's name at ``position``.

    Raises:
        ClipeditError: ``n`` < 1, or the model's world has no labelled scenes.
    """
    if n < 1:
        raise ClipeditError(f"the typographic training split needs at least 1 scene, got {n}")
    world = bundle.world
    if world is None or not world.classnames:
        raise ClipeditError(f"{bundle.name} has no labelled world to draw a typographic training split from")
    sampler = StyleSampler.exemplar(position=position)
    try:
        attacks, labels = world.attack_set(n, TRAIN_SEED + seed, "other", sampler=sampler)
    except TypeError:
        raise ClipeditError(f"{world.name} cannot draw a training split in exemplar styles") from None
    clean = torch.cat(list(to_batches([a.clean for a in attacks], bundle.preprocess, 256)))
    attacked = torch.cat(list(to_batches([a.attacked for a in attacks], bundle.preprocess, 256)))
    return TypoSet(clean, attacked, torch.tensor(labels), [a.text for a in attacks], list(world.classnames))


@torch.no_grad()
def correct(predictor: Predictor, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> int:
    """How many of ``images`` the predictor classifies as ``labels``."""
    hits = 0
    for i in range(0, images.shape[0], batch_size):
        pred = predictor(images[i:i + batch_size]).argmax(1).cpu()
        hits += int((pred == labels[i:i + batch_size]).sum())
    return hits
