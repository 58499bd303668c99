"""Draw a label (glyphs and their backing) as alpha masks in its own frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


@dataclass
class LabelLayer:
    """Alpha masks of one label, unwarped; both uint8 arrays of the label's size.

    Attributes:
        glyph: Anti-aliased glyph coverage (0..255).
        backing: Coverage of the note or sticker (all zero for bare text).
    """

    glyph: np.ndarray
    backing: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels."""
        return self.glyph.shape[1], self.glyph.shape[0]


def text_extent(text: str, font: ImageFont.FreeTypeFont, stroke: int) -> tuple[int, int, int, int]:
    """Ink bounding box (left, top, right, bottom) of ``text`` drawn at the origin."""
    return tuple(int(v) for v in _MEASURE.textbbox((0, 0), text, font=font, stroke_width=stroke))


def label_size(extent: tuple[int, int, int, int], pad_px: int) -> tuple[int, int]:
    """Width and height of a label holding ink ``extent`` with ``pad_px`` margins."""
    left, top, right, bottom = extent
    return right - left + 2 * pad_px, bottom - top + 2 * pad_px


def draw_label(
    text: str,
    font: ImageFont.FreeTypeFont,
    stroke: int,
    extent: tuple[int, int, int, int],
    pad_px: int,
    kind: str,
) -> LabelLayer:
    """Render ``text`` with ``pad_px`` margins and the backing of ``kind``."""
    w, h = label_size(extent, pad_px)
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).text(
        (pad_px - extent[0], pad_px - extent[1]), text, font=font, fill=255,
        stroke_width=stroke, stroke_fill=255,
    )
    glyph = np.asarray(canvas, dtype=np.uint8)
    if kind == "note":
        backing = np.full((h, w), 255, np.uint8)
    elif kind == "sticker":
        backing = rounded_rect_alpha(w, h, radius=0.3 * min(w, h))
    else:
        backing = np.zeros((h, w), np.uint8)
    return LabelLayer(glyph=glyph, backing=backing)


def rounded_rect_alpha(w: int, h: int, radius: float) -> np.ndarray:
    """Anti-aliased coverage (uint8) of a ``w`` x ``h`` rectangle with rounded corners."""
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    dx = xs - np.clip(xs, radius, w - radius)
    dy = ys - np.clip(ys, radius, h - radius)
    dist = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    cover = np.clip(radius + 0.5 - dist, 0.0, 1.0) if radius > 0 else np.ones_like(dist)
    cover = np.minimum(cover, 1.0)
    return np.rint(cover * 255).astype(np.uint8)
