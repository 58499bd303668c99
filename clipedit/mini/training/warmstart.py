"""Supervised warm start of the mini CLIP's image tower: learn to see objects and to read words.

Contrastive training from scratch on 2 CPU cores learns objects long before it learns to read
(measured: no reading after 1500 steps of a 4-layer ViT). A few hundred steps of two linear heads
on the image embedding, one naming the object and one the written word (or "no writing"), give
the tower both skills; the contrastive stage that follows decides, through the captions, which one
wins. The heads are thrown away: the checkpoint stays a plain open_clip ``CLIP``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipedit.mini.training.captions import DISTRACTOR_WORDS
from clipedit.mini.training.pool import Pool
from clipedit.mini.world import CLASSNAMES

log = logging.getLogger(__name__)

WORDS: tuple[str, ...] = (*CLASSNAMES, *DISTRACTOR_WORDS)  # the word head's classes, then "no writing"


def cosine_lr(step: int, steps: int, warmup: int, lr: float) -> float:
    """Learning rate at ``step``: linear warmup over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def word_targets(pool: Pool) -> torch.Tensor:
    """Index in :data:`WORDS` of each pool image's written word; ``len(WORDS)`` where there is none."""
    index = {w: i for i, w in enumerate(WORDS)}
    return torch.tensor([len(WORDS) if w is None else index[w] for w in pool.words])


def warm_start(visual: nn.Module, embed_dim: int, pool: Pool, steps: int, batch: Callable, rng: np.random.Generator,
               lr: float, batch_size: int, autocast: bool) -> float:
    """Train ``visual`` with an object head and a word head for ``steps`` steps; return the last loss.

    Args:
        visual: the image tower (trained in place).
        embed_dim: its output width.
        pool: the training pool (signs have label -1 and no object target).
        batch: ``batch(pool, index, rng)`` -> normalised image tensor.
        lr: peak learning rate of a linear-warmup cosine schedule.
        autocast: run the forward pass under bfloat16 autocast.
    """
    heads = nn.ModuleList([nn.Linear(embed_dim, len(CLASSNAMES)), nn.Linear(embed_dim, len(WORDS) + 1)])
    objects, words = torch.from_numpy(pool.labels), word_targets(pool)
    optimizer = torch.optim.AdamW([*visual.parameters(), *heads.parameters()], lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, warmup, lr)
        index = rng.integers(len(pool), size=batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            features = visual(batch(pool, index, rng))
        features = features.float()
        loss = (F.cross_entropy(heads[0](features), objects[index], ignore_index=-1)
                + F.cross_entropy(heads[1](features), words[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            log.info("warm start %d/%d loss %.3f", step + 1, steps, loss.item())
    return loss.item()
