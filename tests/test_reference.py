"""Reference images for the key statistics."""
import numpy as np
import pytest
from PIL import Image

from clipedit.data.reference import default_reference, images_key, photo_views, sample_photos
from clipedit.errors import ClipeditError


@pytest.fixture(scope="module")
def gradient() -> Image.Image:
    x = np.linspace(0, 255, 120, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (80, 1))] * 3, axis=-1))


def test_photo_views_are_seeded_crops_inside_the_image(gradient):
    views = photo_views([gradient, gradient], per_image=6, seed=3)
    assert len(views) == 12
    assert all(1 <= v.width <= 120 and 1 <= v.height <= 80 for v in views)
    assert all(v.width * v.height >= 0.14 * 120 * 80 for v in views)  # min_area 0.15, less rounding
    again = photo_views([gradient, gradient], per_image=6, seed=3)
    assert images_key(views) == images_key(again)
    assert images_key(views) != images_key(photo_views([gradient, gradient], per_image=6, seed=4))


def test_photo_views_differ_from_each_other(gradient):
    views = photo_views([gradient], per_image=8, seed=0)
    assert len({(v.size, v.tobytes()) for v in views}) == 8


@pytest.mark.parametrize("kwargs", [{"per_image": 0}, {"per_image": 2, "min_area": 0.0},
                                    {"per_image": 2, "min_area": 1.5}])
def test_photo_views_reject_bad_arguments(gradient, kwargs):
    with pytest.raises(ClipeditError):
        photo_views([gradient], **kwargs)


def test_default_reference_is_views_of_every_sample_photo():
    photos = sample_photos()
    assert len(photos) >= 15
    reference = default_reference(per_image=2)
    assert len(reference) == 2 * len(photos)
    assert all(r.mode == "RGB" for r in reference)
