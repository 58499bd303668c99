"""Held-out figures of a CLIP on the mini world: clean, blank-note and text-note zero-shot accuracy."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..zeroshot import zero_shot_weights
from .world import CLASSNAMES, TEMPLATES, attack_set

HELDOUT_N = 1200
HELDOUT_SEED = 20240


@torch.no_grad()
def predict(model, preprocess: Callable, images: Sequence[Image.Image], weights: torch.Tensor,
            batch_size: int = 256) -> np.ndarray:
    """Zero-shot class index of each image."""
    device = next(model.parameters()).device
    preds = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(im) for im in images[i:i + batch_size]]).to(device)
        feats = F.normalize(model.encode_image(batch).float(), dim=-1)
        preds.append((feats @ weights).argmax(-1).cpu())
    return torch.cat(preds).numpy()


def heldout_figures(model, preprocess: Callable, tokenizer, n: int = HELDOUT_N, seed: int = HELDOUT_SEED,
                    classnames: Sequence[str] = CLASSNAMES, templates: Sequence[str] = TEMPLATES) -> dict:
    """Accuracy on clean, blank-note and text-note versions of ``n`` held-out scenes, and attack success.

    The notes use held-out styles and name another class; attack success is the share of
    text-note images classified as the written word.
    """
    was_training = model.training
    model.eval()
    weights = zero_shot_weights(model, tokenizer, list(classnames), list(templates))
    attacks, labels = attack_set(n, seed)
    truth = np.asarray(labels)
    written = np.asarray([list(classnames).index(a.text) for a in attacks])
    clean = predict(model, preprocess, [a.clean for a in attacks], weights)
    blank = predict(model, preprocess, [a.blank for a in attacks], weights)
    text = predict(model, preprocess, [a.attacked for a in attacks], weights)
    model.train(was_training)
    return {
        "n": n,
        "seed": seed,
        "clean_acc": round(float(np.mean(clean == truth)), 4),
        "blank_acc": round(float(np.mean(blank == truth)), 4),
        "text_acc": round(float(np.mean(text == truth)), 4),
        "attack_success": round(float(np.mean(text == written)), 4),
    }
