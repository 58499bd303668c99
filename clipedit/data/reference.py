"""Reference images for the key statistics C: scikit-image's photographs and seeded views of them."""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from clipedit.errors import ClipeditError

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "horse", "camera", "brick",
                 "grass", "gravel", "coins", "moon", "page", "immunohistochemistry", "retina",
                 "hubble_deep_field", "cell", "text", "colorwheel", "clock")


def sample_photos(names: Sequence[str] = SAMPLE_PHOTOS) -> list[Image.Image]:
    """scikit-image's shipped photographs as RGB (those this version has without a download)."""
    from skimage import data

    out = []
    for name in names:
        try:
            arr = getattr(data, name)()
        except Exception:  # missing in this version, or one it would have to download
            continue
        arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out.append(Image.fromarray(arr).convert("RGB"))
    return out


def photo_views(images: Sequence[Image.Image], per_image: int, seed: int = 0,
                min_area: float = 0.15) -> list[Image.Image]:
    """Random-resized crops (area ``min_area``..1, aspect 3:4..4:3, half mirrored) of each image.

    A few photos give few keys at a coarse site (7x7 locations each); their views give C enough
    samples to be full rank. Deterministic for a given ``seed``.
    """
    if per_image < 1:
        raise ClipeditError(f"views per image must be >= 1, got {per_image}")
    if not 0 < min_area <= 1:
        raise ClipeditError(f"min_area must be in (0, 1], got {min_area}")
    rng = random.Random(seed)
    out = []
    for image in images:
        w, h = image.size
        for _ in range(per_image):
            area, aspect = rng.uniform(min_area, 1.0), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw = max(1, min(w, round(w * math.sqrt(area * aspect))))
            ch = max(1, min(h, round(h * math.sqrt(area / aspect))))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            view = image.crop((x, y, x + cw, y + ch))
            out.append(ImageOps.mirror(view) if rng.random() < 0.5 else view)
    return out


REFERENCE_VIEWS = 8  # views per sample photo: 20 photos x 8 x 49 locations > a 1152-dim site's keys


def default_reference(per_image: int = REFERENCE_VIEWS, seed: int = 0) -> list[Image.Image]:
    """The reference set used when none is given: seeded views of scikit-image's photos."""
    return photo_views(sample_photos(), per_image, seed)


def images_key(images: Sequence[Image.Image]) -> str:
    """A cache key for a list of images: a digest of their sizes and every pixel (as RGB), in order."""
    h = hashlib.blake2b(digest_size=16)
    for im in images:
        h.update(f"{im.size};".encode())
        h.update(np.asarray(im.convert("RGB")).tobytes())
    return h.hexdigest()
