"""The attack evaluation sharded over ``torch.distributed`` ranks.

Each rank runs the model on its contiguous share of the attacks (clean, blank-note and text-note
images); the logits are summed across ranks into the full (n, classes) tables (every row comes from
exactly one rank, the others add zeros), and :func:`clipedit.eval.metrics.evaluate_attacks` scores
them on every rank. The counts it reports are then those of one process over all images, whatever
metrics it computes.

    torchrun --nproc_per_node 4 my_audit.py   # calls evaluate_attacks_sharded; every rank gets the totals
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import torch
from PIL import Image

from attacks import Attack
from clipedit.core.distributed import all_reduce_sum, is_distributed, shard_bounds
from clipedit.eval.metrics import evaluate_attacks, predict_logits
from clipedit.eval.predictor import Predictor
from clipedit.models.bundle import ModelBundle


def attack_images(attacks: Sequence[Attack]) -> dict[str, list[Image.Image]]:
    """The three images of every attack, by set: ``clean``, ``blank`` and ``text``."""
    return {"clean": [a.clean for a in attacks], "blank": [a.blank for a in attacks],
            "text": [a.attacked for a in attacks]}


def sharded_logits(bundle: ModelBundle, predictor: Predictor, images: Sequence[Image.Image],
                   batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Logits (n, classes) of all ``images`` on every rank; each rank runs the model on its share only."""
    start, stop = shard_bounds(len(images))
    full = torch.zeros(len(images), predictor.n_classes)
    if stop > start:
        full[start:stop] = predict_logits(bundle, predictor, images[start:stop], batch_size, "shard", progress)
    return all_reduce_sum(full)


def evaluate_attacks_sharded(bundle: ModelBundle, predictor: Predictor, attacks: Sequence[Attack],
                             labels: Sequence[int], word_indices: Optional[Sequence[Optional[int]]] = None,
                             batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate_attacks` with the model run on this rank's share only; every rank gets the full result.

    Every rank passes the same ``attacks``. Outside a process group this is ``evaluate_attacks``.
    """
    if not is_distributed():
        return evaluate_attacks(bundle, predictor, attacks, labels, word_indices, batch_size, progress)
    rows: dict[int, torch.Tensor] = {}
    for images in attack_images(attacks).values():
        logits = sharded_logits(bundle, predictor, images, batch_size, progress)
        rows.update({id(image): row for image, row in zip(images, logits)})
    replay = _LogitsReplay(predictor.classnames, rows)
    return evaluate_attacks(dataclasses.replace(bundle, preprocess=replay.index), replay, attacks, labels,
                            word_indices, batch_size, progress=False)


class _LogitsReplay:
    """Stands in for the model when ``evaluate_attacks`` scores logits that were already gathered:
    ``index`` is the bundle's preprocessing (image -> its key) and calling it returns the stored rows.

    An image object that appears in several sets (a photo shared by its attacks) has one row: the
    same pixels give the same logits.
    """

    def __init__(self, classnames: Sequence[str], rows: dict[int, torch.Tensor]) -> None:
        self.classnames = list(classnames)
        self.rows = rows

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def index(self, image: Image.Image) -> torch.Tensor:
        return torch.tensor(id(image), dtype=torch.int64)

    def __call__(self, keys: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.rows[int(k)] for k in keys])
