"""Where a label's corners go: rotation, perspective jitter and placement."""
from __future__ import annotations

import math

import numpy as np

# Direction in which each corner (TL, TR, BR, BL) moves inward under perspective jitter.
_INWARD = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)


def source_corners(w: int, h: int) -> np.ndarray:
    """Corners (TL, TR, BR, BL) of a ``w`` x ``h`` label in its own frame, 4x2."""
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)


def label_quad(w: int, h: int, rotation: float, perspective: float, jitter: np.ndarray) -> np.ndarray:
    """Corners of the label after perspective jitter and rotation, still in its own frame.

    Args:
        w: Label width.
        h: Label height.
        rotation: Degrees, counter-clockwise on screen, about the label centre.
        perspective: Corners move inward by up to this fraction of half the size.
        jitter: 4x2 values in [0, 1] scaling each corner's inward move.
    """
    quad = source_corners(w, h) + _INWARD * jitter * perspective * np.array([w / 2, h / 2])
    center = np.array([w / 2, h / 2])
    theta = math.radians(rotation)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])  # y points down, so this turns counter-clockwise on screen
    return (quad - center) @ rot.T + center


def translation_range(quad: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer shifts (tx_lo, tx_hi, ty_lo, ty_hi) that keep ``quad`` inside the image; None if none."""
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    tx_lo, ty_lo = math.ceil(-lo[0] - 1e-9), math.ceil(-lo[1] - 1e-9)
    tx_hi, ty_hi = math.floor(width - hi[0] + 1e-9), math.floor(height - hi[1] + 1e-9)
    if tx_lo > tx_hi or ty_lo > ty_hi:
        return None
    return tx_lo, tx_hi, ty_lo, ty_hi


def choose_translation(
    quad: np.ndarray,
    label_wh: tuple[int, int],
    shifts: tuple[int, int, int, int],
    position: str | tuple[float, float],
    image_wh: tuple[int, int],
    rng: np.random.Generator,
    object_box: tuple[int, int, int, int] | None,
) -> tuple[int, int]:
    """Integer shift that puts the label at ``position`` while keeping it inside the image."""
    tx_lo, tx_hi, ty_lo, ty_hi = shifts
    half_w, half_h = label_wh[0] / 2, label_wh[1] / 2
    width, height = image_wh
    if position == "random":
        return int(rng.integers(tx_lo, tx_hi + 1)), int(rng.integers(ty_lo, ty_hi + 1))
    if position == "object" and object_box is not None:
        cx, cy = _point_in_box(quad, label_wh, object_box, rng)
    elif isinstance(position, tuple):
        cx, cy = position[0] * width, position[1] * height
    else:  # "center", or "object" without a box
        cx, cy = width / 2, height / 2
    tx = min(max(round(cx - half_w), tx_lo), tx_hi)
    ty = min(max(round(cy - half_h), ty_lo), ty_hi)
    return tx, ty


def _point_in_box(
    quad: np.ndarray, label_wh: tuple[int, int], box: tuple[int, int, int, int], rng: np.random.Generator
) -> tuple[float, float]:
    """Random label centre that keeps the label inside ``box`` (the box centre if it is too small)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    center = np.array(label_wh, dtype=np.float64) / 2
    lo, hi = quad.min(axis=0) - center, quad.max(axis=0) - center
    out = []
    for a, b, low, high in ((x0, x1, lo[0], hi[0]), (y0, y1, lo[1], hi[1])):
        start, stop = a - low, b - high
        out.append(rng.uniform(start, stop) if start < stop else (a + b) / 2)
    return out[0], out[1]
