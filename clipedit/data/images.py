"""Images from disk (loose photos or an ImageFolder tree), attack sets built from them, and batching."""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipedit.errors import ClipeditError
from clipedit.io import require_file

log = logging.getLogger(__name__)

#: Largest image file read (far above any photo; a bound keeps a stray huge file out of memory).
MAX_IMAGE_BYTES = 512 * 2**20
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB.

    Raises:
        ClipeditError: the file is missing, a directory, or not a readable image.
    """
    path = require_file(path, "image", max_bytes=MAX_IMAGE_BYTES)  # never a FIFO, a device or a folder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on some truncated files before failing
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except Exception as e:  # UnidentifiedImageError, truncated data, decompression bombs …
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot identify image file" in reason:
            reason = "not a recognised image format"
        raise ClipeditError(f"cannot read image {path}: {reason}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; 16- and 32-bit greyscale are scaled to their full range, not clipped at 255
    (PIL's own ``convert`` would turn most of a 16-bit image white)."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    else:
        top = 65535.0 if image.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
    grey = np.clip(np.round(np.nan_to_num(values) / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


class LazyImages(Sequence[Image.Image]):
    """A sequence of image files, each read when indexed (so large folders need little memory)."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return LazyImages(self.paths[i])
        return load_image(self.paths[i])


def load_photos(paths: Sequence[str | os.PathLike]) -> list[Image.Image]:
    """Read loose photos; raises ClipeditError naming the first missing or corrupt file."""
    if not paths:
        raise ClipeditError("no photos given")
    return [load_image(p) for p in paths]


def to_batches(images: Sequence[Image.Image], preprocess: Callable[[Image.Image], torch.Tensor],
               batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Stacked preprocessed tensors (B, C, H, W) of ``images``, ``batch_size`` at a time."""
    if batch_size < 1:
        raise ClipeditError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield torch.stack([preprocess(images[i]) for i in range(start, min(start + batch_size, len(images)))])


def load_mask(path) -> np.ndarray:
    """A mask image (any mode): pixels brighter than half are the label."""
    from clipedit.data.images import load_image

    grey = np.asarray(load_image(path).convert("L"))
    return grey > 127
