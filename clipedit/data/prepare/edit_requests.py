"""Turn exemplars (rendered attacks or real photo pairs) into the rewrite core's ``EditRequest``."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from clipedit.core import EditRequest, KeepRequest
from clipedit.errors import EditError


def preprocess_mask(preprocess: Callable[[Image.Image], torch.Tensor], mask: np.ndarray) -> torch.Tensor:
    """Send a pixel mask through an image's preprocessing (resize, crop …): (H', W') in [0, 1].

    The mask is preprocessed as a grey image and the normalisation undone, so the geometry always
    matches the image's, whatever transforms the model's preprocessing holds.
    """
    grey = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).convert("RGB")
    x = preprocess(grey)
    mean, std = _normalisation(preprocess)
    if mean is not None:
        x = x * torch.as_tensor(std, dtype=x.dtype)[:, None, None] + torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    return x[0].clamp(0, 1)


def _normalisation(preprocess) -> tuple:
    for t in getattr(preprocess, "transforms", ()):
        if type(t).__name__ == "Normalize":
            return t.mean, t.std
    return None, None


def request_from_images(preprocess: Callable, attacked: Sequence[Image.Image], target: Sequence[Image.Image],
                        masks: Sequence[np.ndarray]) -> EditRequest:
    """An ``EditRequest`` from PIL exemplar pairs and their label masks (same size per pair)."""
    if not (len(attacked) == len(target) == len(masks)) or not attacked:
        raise EditError("need the same, non-zero number of attacked images, targets and masks")
    for i, (a, t, m) in enumerate(zip(attacked, target, masks)):
        if a.size != t.size:
            raise EditError(f"exemplar {i}: attacked image {a.size[0]}x{a.size[1]} and blank image "
                            f"{t.size[0]}x{t.size[1]} differ in size")
        if np.asarray(m).shape != (a.size[1], a.size[0]):
            raise EditError(f"exemplar {i}: mask {np.asarray(m).shape[1::-1]} does not match the image "
                            f"{a.size[0]}x{a.size[1]}")
        if not np.asarray(m).any():
            raise EditError(f"exemplar {i}: the mask is empty")
    return EditRequest(attacked=torch.stack([preprocess(a) for a in attacked]),
                       target=torch.stack([preprocess(t) for t in target]),
                       mask=torch.stack([preprocess_mask(preprocess, m) for m in masks]))


def request_from_attacks(preprocess: Callable, attacks: Sequence, use_text_mask: bool = True) -> EditRequest:
    """An ``EditRequest`` from rendered attacks: attacked -> blank at the glyphs (or the whole label)."""
    return request_from_images(preprocess, [a.attacked for a in attacks], [a.blank for a in attacks],
                               [a.text_mask if use_text_mask else a.mask for a in attacks])


def keep_request_from_attacks(preprocess: Callable, attacks: Sequence, use_text_mask: bool = True) -> KeepRequest:
    """A ``KeepRequest`` from rendered signs: their written images, kept at the glyphs (or the whole label)."""
    if not attacks:
        raise EditError("no signs to keep")
    return KeepRequest(images=torch.stack([preprocess(a.attacked) for a in attacks]),
                       mask=torch.stack([preprocess_mask(preprocess, a.text_mask if use_text_mask else a.mask)
                                         for a in attacks]))
