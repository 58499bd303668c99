"""Concept edits (Santurkar et al. 2021): make a classifier treat a transformed region like the original.

An exemplar photo, a mask and a transformation of the masked region (a pasted texture, e.g. snow on
a road) give a pair; the rewrite core edits one layer so that the transformed region's features
map to the original's (or the other way round):

    pair = texture_pair(photo, polygon_mask(photo.size, ROAD), load_image("snow_texture.jpg"))
    request = concept_request(bundle.preprocess, [pair], direction="to-original")
    result = concept_edit(bundle, request, ConceptConfig(hparams=RewriteHParams(rank=1)))
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
from PIL import Image, ImageDraw

from clipedit.core import EditRequest, RewriteHParams, key_statistics
from clipedit.data.images import to_batches
from clipedit.data.prepare.exemplars import request_from_images
from clipedit.data.reference import default_reference, images_key
from clipedit.errors import ClipeditError
from clipedit.methods.finetune import FinetuneHParams
from clipedit.methods.registry import method_spec, run_defense
from clipedit.methods.spec import DefenseData, DefenseResult
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)

DIRECTIONS = ("to-original", "to-transformed")


# -- masks ---------------------------------------------------------------------------------------
def band_mask(size: tuple[int, int], top: float, bottom: float = 1.0) -> np.ndarray:
    """A horizontal band of an image of ``size`` (W, H): rows from ``top`` to ``bottom`` (fractions)."""
    if not 0 <= top < bottom <= 1:
        raise ClipeditError(f"a band needs 0 <= top < bottom <= 1, got {top}:{bottom}")
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    mask[int(round(top * h)):int(round(bottom * h))] = True
    return mask


def polygon_mask(size: tuple[int, int], points: Sequence[tuple[float, float]]) -> np.ndarray:
    """A polygon given by (x, y) vertices as fractions of the width and height of ``size`` (W, H)."""
    if len(points) < 3:
        raise ClipeditError(f"a polygon needs at least 3 points, got {len(points)}")
    if any(not (0 <= x <= 1 and 0 <= y <= 1) for x, y in points):
        raise ClipeditError("polygon points are fractions of the image size, in [0, 1]")
    w, h = size
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(x * (w - 1), y * (h - 1)) for x, y in points], fill=255)
    mask = np.asarray(canvas) > 0
    if not mask.any():
        raise ClipeditError("the polygon covers no pixel")
    return mask


def parse_points(text: str) -> list[tuple[float, float]]:
    """``"x,y x,y …"`` (or ``;``-separated) -> [(x, y), …]."""
    try:
        return [tuple(float(v) for v in p.split(",")) for p in text.replace(";", " ").split()]  # type: ignore[misc]
    except ValueError:
        raise ClipeditError(f"cannot read polygon {text!r}; expected 'x,y x,y x,y' with fractions") from None


# -- transformations ------------------------------------------------------------------------------
#: Largest texture after ``scale`` (a photo-sized texture is a few million pixels).
MAX_TEXTURE_PIXELS = 64 * 2**20


def tile_texture(texture: Image.Image, size: tuple[int, int], scale: float = 1.0) -> Image.Image:
    """``texture`` (resized by ``scale``) repeated to cover ``size`` (W, H); larger textures are cropped."""
    if not math.isfinite(scale) or scale <= 0:
        raise ClipeditError(f"texture scale must be a finite number > 0, got {scale}")
    tex = texture.convert("RGB")
    if scale != 1.0:
        width, height = max(1, round(tex.width * scale)), max(1, round(tex.height * scale))
        if width * height > MAX_TEXTURE_PIXELS:
            raise ClipeditError(f"texture scale {scale:g} makes the {tex.width}x{tex.height} texture {width}x{height} "
                                f"pixels, more than {MAX_TEXTURE_PIXELS:,}; choose a smaller --texture-scale")
        tex = tex.resize((width, height), Image.BICUBIC)
    w, h = size
    canvas = Image.new("RGB", (w, h))
    for y in range(0, h, tex.height):
        for x in range(0, w, tex.width):
            canvas.paste(tex, (x, y))
    return canvas


def paste_texture(image: Image.Image, mask: np.ndarray, texture: Image.Image, scale: float = 1.0) -> Image.Image:
    """``image`` with its masked pixels replaced by ``texture``, tiled from the mask's top-left corner."""
    mask = _check_mask(image, mask)
    rows, cols = np.nonzero(mask)
    top, left = int(rows.min()), int(cols.min())
    tiles = tile_texture(texture, (image.width - left, image.height - top), scale)
    filled = np.asarray(image.convert("RGB")).copy()
    region = mask[top:, left:]
    filled[top:, left:][region] = np.asarray(tiles)[region]
    return Image.fromarray(filled)


def _check_mask(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise ClipeditError(f"mask {mask.shape[1]}x{mask.shape[0]} does not match the image "
                            f"{image.width}x{image.height}")
    if not mask.any():
        raise ClipeditError("the mask is empty")
    return mask


# -- pairs and requests ---------------------------------------------------------------------------
@dataclass
class ConceptPair:
    """An exemplar: the photo, its transformed version (same size), and where they differ."""

    original: Image.Image
    transformed: Image.Image
    mask: np.ndarray


def texture_pair(image: Image.Image, mask: np.ndarray, texture: Image.Image, scale: float = 1.0) -> ConceptPair:
    """The photo and the photo with ``texture`` pasted on its masked region."""
    image = image.convert("RGB")
    return ConceptPair(image, paste_texture(image, mask, texture, scale), _check_mask(image, mask))


def photo_pair(original: Image.Image, transformed: Image.Image, mask: np.ndarray) -> ConceptPair:
    """A real photo pair (e.g. a photo and its hand-edited version) and the mask of the edited region."""
    if original.size != transformed.size:
        raise ClipeditError(f"the photo ({original.width}x{original.height}) and its edited version "
                            f"({transformed.width}x{transformed.height}) differ in size")
    original = original.convert("RGB")
    return ConceptPair(original, transformed.convert("RGB"), _check_mask(original, mask))


def concept_request(preprocess, pairs: Sequence[ConceptPair],
                    direction: Literal["to-original", "to-transformed"] = "to-original") -> EditRequest:
    """The rewrite's request: ``to-original`` maps the transformed region to the original's features
    (snowy road ≡ road when snow was pasted on a road); ``to-transformed`` the other way round."""
    if direction not in DIRECTIONS:
        raise ClipeditError(f"unknown direction {direction!r} (choose from {', '.join(DIRECTIONS)})")
    if not pairs:
        raise ClipeditError("no exemplar pairs given")
    keys = [p.transformed if direction == "to-original" else p.original for p in pairs]
    values = [p.original if direction == "to-original" else p.transformed for p in pairs]
    return request_from_images(preprocess, keys, values, [p.mask for p in pairs])


# -- the edit ------------------------------------------------------------------------------------
#: The methods that learn from an arbitrary exemplar pair (the typographic peers need words, a text
#: tower or a labelled world, which a concept edit does not have).
CONCEPT_METHODS = ("edit", "finetune-local", "finetune-global")


@dataclass
class ConceptConfig:
    """How to make the concept edit.

    Attributes:
        method: ``edit`` (the rewrite) or a fine-tuning baseline on the same pair.
        hparams: the rewrite's layer (None = the model's default), rank, solver …
        finetune: the baselines' steps, learning rate and loss.
    """

    method: Literal["edit", "finetune-local", "finetune-global"] = "edit"  # CONCEPT_METHODS
    hparams: RewriteHParams = field(default_factory=lambda: RewriteHParams(rank=1))
    finetune: FinetuneHParams = field(default_factory=lambda: FinetuneHParams(steps=200, lr=1e-4, loss="kl"))


def concept_edit(bundle: ModelBundle, request: EditRequest, config: Optional[ConceptConfig | DefenseConfig] = None,
                 reference: Optional[Sequence[Image.Image]] = None, layer: Optional[str] = None) -> DefenseResult:
    """Edit ``bundle.model`` in place so the request's keys are treated like its targets.

    Args:
        config: a :class:`ConceptConfig`, or a :class:`DefenseConfig` (e.g. resolved by the CLI; used as it is).
        reference: images for the key statistics C (default: views of scikit-image's photos).
        layer: site (dotted name in ``bundle.model``) overriding a ConceptConfig's ``hparams.layer``;
            default: the model's default site.
    """

    config = config or ConceptConfig()
    if isinstance(config, ConceptConfig):  # the method's settings, its site given apart
        site = layer or config.hparams.layer
        settings = config.finetune if isinstance(config.finetune, method_spec(config.method).hparams_cls) \
            else dataclasses.replace(config.hparams, layer=None)
        config = DefenseConfig(method=config.method, hparams=settings, sites=(site,) if site else None)

    def statistics(site: str):
        images = list(reference) if reference else default_reference()
        return key_statistics(bundle.model, site, lambda: to_batches(images, bundle.preprocess, 32),
                              data_key=images_key(images) + repr(bundle.preprocess), forward=bundle.encode_images)

    resolved = resolve_config(bundle, config)
    return run_defense(bundle, DefenseData.of([], request), resolved, statistics, {"task": "concept_edit"})
