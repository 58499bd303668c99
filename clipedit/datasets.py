"""Images from disk (loose photos or an ImageFolder tree), attack sets built from them, and batching."""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from attacks import Attack, StyleSampler, render_attack

from .errors import ClipeditError
from .predict import class_index, normalize_name

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB.

    Raises:
        ClipeditError: the file is missing, a directory, or not a readable image.
    """
    path = Path(path)
    if not path.exists():
        raise ClipeditError(f"image not found: {path}")
    if not path.is_file():
        raise ClipeditError(f"not an image file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on some truncated files before failing
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
    except Exception as e:  # UnidentifiedImageError, truncated data, decompression bombs …
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot identify image file" in reason:
            reason = "not a recognised image format"
        raise ClipeditError(f"cannot read image {path}: {reason}") from None


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


@dataclass
class LabeledImages:
    """Images with integer labels into ``classnames``.

    Attributes:
        images: the images (PIL or a :class:`LazyImages`).
        labels: class index of each image.
        classnames: the class names.
        paths: the files the images came from (empty when generated).
    """

    images: Sequence[Image.Image]
    labels: list[int]
    classnames: list[str]
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.labels)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with a common image extension (hidden files excluded)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image_folder(root: str | os.PathLike, check: bool = True) -> LabeledImages:
    """An ImageFolder tree: ``root/<class>/<image>``; class names are the folder names with ``_`` as spaces.

    Args:
        root: the directory.
        check: open every image now so that a corrupt file fails before any work is done.

    Raises:
        ClipeditError: missing directory, no class folders or images, or (with ``check``) a corrupt image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClipeditError(f"data directory not found: {root}")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    classnames: list[str] = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if is_image_file(p))
        if not files:
            log.warning("skipping %s: no images", folder)
            continue
        labels += [len(classnames)] * len(files)
        classnames.append(folder.name.replace("_", " "))
        paths += files
    if not paths:
        raise ClipeditError(f"no images found in {root} (expected {root}/<class>/<image>.jpg)")
    if check:
        for p in paths:
            load_image(p).close()
    log.info("loaded %d images of %d classes from %s", len(paths), len(classnames), root)
    return LabeledImages(LazyImages(paths), labels, classnames, paths)


def load_photos(paths: Sequence[str | os.PathLike]) -> list[Image.Image]:
    """Read loose photos; raises ClipeditError naming the first missing or corrupt file."""
    if not paths:
        raise ClipeditError("no photos given")
    return [load_image(p) for p in paths]


def remap_labels(labels: Sequence[int], from_names: Sequence[str], to_names: Sequence[str]) -> list[int]:
    """Re-index ``labels`` (into ``from_names``) into ``to_names``, matching names case-insensitively.

    Raises:
        ClipeditError: a used class is missing from ``to_names``.
    """
    mapping: dict[int, int] = {}
    missing = []
    for old in sorted(set(labels)):
        new = class_index(from_names[old], to_names)
        if new is None:
            missing.append(from_names[old])
        else:
            mapping[old] = new
    if missing:
        raise ClipeditError(f"class list lacks the data's classes: {', '.join(missing)}")
    return [mapping[label] for label in labels]


def labels_from_names(names: Sequence[str], classnames: Sequence[str]) -> list[int]:
    """Class indices of label ``names``; raises ClipeditError listing names not in ``classnames``."""
    indices = [class_index(n, classnames) for n in names]
    unknown = sorted({n for n, i in zip(names, indices) if i is None})
    if unknown:
        raise ClipeditError(f"labels not in the class list: {', '.join(unknown)}")
    return [int(i) for i in indices]  # type: ignore[arg-type]


def attacks_from_photos(images: Sequence[Image.Image], labels: Sequence[int], classnames: Sequence[str],
                        words: Sequence[str], per_image: Optional[int] = None, seed: int = 0,
                        sampler: Optional[StyleSampler] = None,
                        progress: bool = True) -> tuple[list[Attack], list[int]]:
    """Typographic attacks on photos: each photo gets words other than its own class name.

    Args:
        images: the photos.
        labels: class index (into ``classnames``) of each photo.
        classnames: class names (to recognise a photo's own name among ``words``).
        words: the words to write.
        per_image: None or 0: one render per word; N: N words drawn at random, each
            word once before any repeats.
        seed: seeds word choice, style and placement: equal arguments give equal renders.
        sampler: label styles; ``StyleSampler.heldout()`` by default.

    Returns:
        The attacks and the true label of each.

    Raises:
        ClipeditError: no words, or every word is the photo's own class.
    """
    from tqdm import tqdm

    if len(images) != len(labels):
        raise ClipeditError(f"got {len(images)} images but {len(labels)} labels")
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise ClipeditError("the word list is empty")
    sampler = sampler or StyleSampler.heldout()
    attacks: list[Attack] = []
    out_labels: list[int] = []
    bar = tqdm(range(len(images)), desc="rendering attacks", unit="photo", leave=False,
               disable=None if progress else True)  # None: shown on terminals only
    for i in bar:
        label = int(labels[i])
        own = normalize_name(classnames[label])
        candidates = [w for w in words if normalize_name(w) != own]
        rng = np.random.default_rng([seed, i])
        if per_image and candidates:
            candidates = _draw_words(candidates, per_image, rng)
        image = images[i]
        for word in candidates:
            style = sampler.sample(rng)
            attacks.append(render_attack(image, word, style, seed=int(rng.integers(2**31 - 1))))
            out_labels.append(label)
    if not attacks:
        raise ClipeditError("no attacks to render: every word is the class of its photo")
    return attacks, out_labels


def _draw_words(words: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` of ``words`` at random: every word once before any repeats."""
    order: list[int] = []
    while len(order) < k:
        order += rng.permutation(len(words)).tolist()
    return [words[i] for i in order[:k]]


def to_batches(images: Sequence[Image.Image], preprocess: Callable[[Image.Image], torch.Tensor],
               batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Stacked preprocessed tensors (B, C, H, W) of ``images``, ``batch_size`` at a time."""
    if batch_size < 1:
        raise ClipeditError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield torch.stack([preprocess(images[i]) for i in range(start, min(start + batch_size, len(images)))])
