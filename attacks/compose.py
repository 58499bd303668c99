"""Exact uint8 alpha compositing and image conversion."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import AttackError


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A fresh HxWx3 uint8 copy of a PIL image (any mode) or an HxW / HxWx3 / HxWx4 uint8 array."""
    if isinstance(image, Image.Image):
        arr = np.array(image.convert("RGB"), dtype=np.uint8)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise AttackError(f"image array must be uint8, got {image.dtype}")
        if image.ndim == 2:
            arr = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] in (3, 4):
            arr = np.array(image[:, :, :3], dtype=np.uint8)
        else:
            raise AttackError(f"image array must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
    else:
        raise AttackError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise AttackError(f"image is empty ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


def over(base: np.ndarray, color: tuple[int, int, int], alpha: np.ndarray) -> np.ndarray:
    """Paint ``color`` over ``base`` (int32 HxWx3) with uint8 ``alpha``, rounding to nearest.

    Pixels with alpha 0 come back exactly unchanged.
    """
    a = alpha.astype(np.int32)[:, :, None]
    return (base * (255 - a) + np.asarray(color, np.int32) * a + 127) // 255


def scale_alpha(alpha: np.ndarray, factor: float) -> np.ndarray:
    """``alpha`` (uint8) times ``factor`` in [0, 1], rounded to nearest, as uint8."""
    k = int(round(factor * 255))
    if k >= 255:
        return alpha
    return ((alpha.astype(np.uint16) * k + 127) // 255).astype(np.uint8)
