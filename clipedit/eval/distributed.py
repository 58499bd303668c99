"""The attack evaluation sharded over ``torch.distributed`` ranks.

Each rank runs the model on its contiguous share of the attacks (clean, blank-note and text-note
images); the logits are summed across ranks into the full (n, classes) tables (every row comes from
exactly one rank, the others add zeros), and :func:`clipedit.eval.metrics.score_attacks` (what
``evaluate_attacks`` scores with) turns them into figures on every rank: those of one process over
all images. Before any share is run, the ranks compare a digest of everything they would score (every
image's pixels, the labels, the classes): ranks that read different files behind the same arguments
stop with one line instead of mixing their figures.

    torchrun --nproc_per_node 4 -m clipedit audit …   # calls evaluate_attacks_sharded; every rank gets the totals
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from clipedit.attacks import Attack
from clipedit.core.distributed import agree, agree_on_model, all_reduce_sum, is_distributed, shard_bounds
from clipedit.eval.metrics import attack_image_sets, evaluate_attacks, predict_logits, score_attacks
from clipedit.eval.predictor import Predictor
from clipedit.models.bundle import ModelBundle


def sharded_logits(bundle: ModelBundle, predictor: Predictor, images: Sequence[Image.Image],
                   batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Logits (n, classes) of all ``images`` on every rank; each rank runs the model on its share only."""
    start, stop = shard_bounds(len(images))
    full = torch.zeros(len(images), predictor.n_classes)
    if stop > start:
        full[start:stop] = predict_logits(bundle, predictor, images[start:stop], batch_size, "shard", progress)
    return all_reduce_sum(full)


def attacks_digest(attacks: Sequence[Attack], labels: Sequence[int], classnames: Sequence[str],
                   word_indices: Optional[Sequence[Optional[int]]] = None) -> bytes:
    """SHA-256 over the count, every image of every attack (mode, size, pixels), its word, the labels, the
    word indices and the classes: what a rank's share of an evaluation is read from."""
    h = hashlib.sha256(f"{len(attacks)}:{list(labels)}:{list(classnames)}:{word_indices}".encode())
    for a in attacks:
        h.update(f"{a.text};".encode())
        for image in (a.clean, a.blank, a.attacked):
            h.update(f"{getattr(image, 'mode', '')}:{getattr(image, 'size', '')};".encode())
            h.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return h.digest()


def evaluate_attacks_sharded(bundle: ModelBundle, predictor: Predictor, attacks: Sequence[Attack],
                             labels: Sequence[int], word_indices: Optional[Sequence[Optional[int]]] = None,
                             batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate_attacks` with the model run on this rank's share only; every rank gets the full result.

    Every rank passes the same ``attacks``. Outside a process group this is ``evaluate_attacks``.
    """
    if not is_distributed():
        return evaluate_attacks(bundle, predictor, attacks, labels, word_indices, batch_size, progress)
    agree_on_model(bundle.model)
    agree(attacks_digest(attacks, labels, predictor.classnames, word_indices),
          "images (the files behind --data or --photos, or the rendered notes, differ on some rank)", "read different")
    logits = {k: sharded_logits(bundle, predictor, images, batch_size, progress)
              for k, images in attack_image_sets(attacks).items()}
    return score_attacks(logits, attacks, labels, predictor.classnames, word_indices)
