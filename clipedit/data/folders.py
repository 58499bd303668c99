"""Image folders: the one scanner of image files, and ImageFolder trees (``root/<class>/<image>``)."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipedit.data.images import IMAGE_EXTENSIONS, LazyImages, load_image
from clipedit.errors import ClipeditError

log = logging.getLogger(__name__)


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


def image_paths(folder: str | os.PathLike, what: str = "folder", required: bool = True) -> list[Path]:
    """Every image file below ``folder`` (recursively, sorted; hidden files left out).

    Raises:
        ClipeditError: the folder is missing, or (``required``) holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipeditError(f"{what} {folder} is not a folder" if os.path.lexists(folder) else
                            f"{what} not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if required and not paths:
        raise ClipeditError(f"no images in {what} {folder}")
    return paths


def files_key(paths: Sequence[Path]) -> str:
    """A cache key for files: a digest of their contents, in order (not of their names, sizes or times, which
    a file replaced by another of the same size and modification time keeps)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        try:
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "blake2b").digest())
        except OSError as e:
            raise ClipeditError(f"cannot read {p}: {e.strerror or e}") from None
    h.update(str(len(paths)).encode())
    return "files:" + h.hexdigest()


def load_image_folder(root: str | os.PathLike, check: bool = True) -> LabeledImages:
    """An ImageFolder tree: ``root/<class>/<image>``; class names are the folder names with ``_`` as spaces.

    Args:
        root: the directory.
        check: open every image now so that a corrupt file fails before any work is done.

    Raises:
        ClipeditError: missing directory, no class folders or images, (with ``check``) a corrupt image, a
            class folder that links back to the root or above it, or one image file reached twice (through
            links): each image counts once, under one class.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClipeditError(f"data directory not found: {root}")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    classnames: list[str] = []
    real_root = root.resolve()
    seen: dict[Path, Path] = {}  # resolved file -> the path it was first reached by
    for folder in folders:
        real = folder.resolve()
        if real == real_root or real in real_root.parents:
            raise ClipeditError(f"class folder {folder} links back to {real} (a link loop): it would add every "
                                "image again as a class; remove the link")
        files = image_paths(folder, required=False)
        for f in files:
            first = seen.setdefault(f.resolve(), f)
            if first is not f:
                raise ClipeditError(f"{f} and {first} are the same image file (a link): each image may appear "
                                    "once, under one class")
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
