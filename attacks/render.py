"""render_attack: put a word on a note, sticker or bare onto a photograph, with exact masks."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFont

from .compose import over, scale_alpha, to_rgb_array
from .errors import AttackError
from .fonts import bold_font_path, check_glyphs, default_font_path, load_font
from .geometry import choose_translation, label_quad, source_corners, translation_range
from .label import LabelLayer, draw_label, label_size, text_extent
from .scripts import check_shaping
from .style import LabelStyle

logger = logging.getLogger(__name__)

MIN_FONT_PX = 6
# (padding scale, rotation/perspective scale) tried in turn until the label fits.
_FIT_ATTEMPTS = ((1.0, 1.0), (0.5, 1.0), (0.25, 1.0), (0.0, 1.0), (0.0, 0.5), (0.0, 0.0))


@dataclass
class Attack:
    """One rendered typographic attack.

    Attributes:
        clean: The input photo (RGB).
        attacked: Photo with the label and its text.
        blank: Photo with the same label but no text (equals ``clean`` for kind "text").
        mask: Pixels the label changes: note or sticker, its drop shadow and the glyphs.
        text_mask: Glyph pixels; ``attacked`` differs from ``blank`` only inside it.
        box: (x0, y0, x1, y1) tight bounding box of ``mask``, end-exclusive.
        text: The word.
        style: The style actually requested.
        seed: Seed of the random placement and warp (None: fresh randomness).
        note_mask: Pixels of the note or sticker itself, without its shadow.
        font_px: Font size used, in pixels (smaller than requested only with shrink_to_fit).
        rotation: Rotation used (degrees); may be reduced from the style's to fit.
        perspective: Perspective strength used; may be reduced from the style's to fit.
    """

    clean: Image.Image
    attacked: Image.Image
    blank: Image.Image
    mask: np.ndarray
    text_mask: np.ndarray
    box: tuple[int, int, int, int]
    text: str
    style: LabelStyle
    seed: int | None
    note_mask: np.ndarray | None = None
    font_px: int = 0
    rotation: float = 0.0
    perspective: float = 0.0


@dataclass
class _Layout:
    font: ImageFont.FreeTypeFont
    font_px: int
    stroke: int
    extent: tuple[int, int, int, int]
    pad_px: int
    rotation: float
    perspective: float
    quad: np.ndarray
    shifts: tuple[int, int, int, int]


def render_attack(
    image: Image.Image | np.ndarray,
    text: str,
    style: LabelStyle | None = None,
    *,
    seed: int | None = None,
    object_box: tuple[int, int, int, int] | None = None,
) -> Attack:
    """Render ``text`` onto ``image`` in ``style``.

    Args:
        image: PIL image (any mode) or HxWx3 uint8 array.
        text: The word to write.
        style: Appearance and placement; defaults to ``LabelStyle()``.
        seed: Seed for placement and perspective; same inputs and seed give identical bytes.
        object_box: (x0, y0, x1, y1) of the object, used by position "object".

    Raises:
        AttackError: Empty text, unreadable font, or text that does not fit the image.
    """
    style = style if style is not None else LabelStyle()
    if not isinstance(style, LabelStyle):
        raise AttackError(f"style must be a LabelStyle, got {type(style).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise AttackError("attack text is empty")
    clean = to_rgb_array(image)
    height, width = clean.shape[:2]
    check_glyphs(text, _font_file(style))
    check_shaping(text)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0.0, 1.0, size=(4, 2))
    layout = _fit_layout(text, style, width, height, jitter)
    label = draw_label(text, layout.font, layout.stroke, layout.extent, layout.pad_px, style.kind)
    shift = choose_translation(
        layout.quad, label.size, layout.shifts, style.position, (width, height), rng, object_box
    )
    return _composite(clean, text, style, seed, label, layout, shift)


def requested_font_px(style: LabelStyle, width: int, height: int) -> int:
    """Font size in pixels that ``style`` asks for on a ``width`` x ``height`` image."""
    size = style.font_size * min(width, height) if style.font_size < 1 else style.font_size
    return max(1, int(round(size)))


def _font_file(style: LabelStyle) -> str:
    """Path of the font ``style`` draws with."""
    if style.font is None:
        return bold_font_path() if style.bold else default_font_path()
    return str(style.font)


def _font_for(style: LabelStyle, px: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """Font object and stroke width (faux bold) for ``style`` at ``px`` pixels."""
    stroke = max(1, round(px / 24)) if style.bold and style.font is not None else 0
    return load_font(_font_file(style), px), stroke


def _fit_layout(text: str, style: LabelStyle, width: int, height: int, jitter: np.ndarray) -> _Layout:
    """Choose font size, padding, rotation and perspective so the label fits the image."""
    wanted = requested_font_px(style, width, height)
    px = wanted
    while True:
        font, stroke = _font_for(style, px)
        extent = text_extent(text, font, stroke)
        for pad_scale, geo_scale in _FIT_ATTEMPTS:
            pad_px = 1 if style.kind == "text" else int(round(style.padding * px * pad_scale))
            w, h = label_size(extent, pad_px)
            rotation, perspective = style.rotation * geo_scale, style.perspective * geo_scale
            quad = label_quad(w, h, rotation, perspective, jitter)
            shifts = translation_range(quad, width, height)
            if shifts is not None:
                if px != wanted or geo_scale != 1.0 or pad_scale != 1.0:
                    logger.debug("label %r fitted at %dpx, padding x%.2f, warp x%.2f", text, px, pad_scale, geo_scale)
                return _Layout(font, px, stroke, extent, pad_px, rotation, perspective, quad, shifts)
        ink_w, ink_h = extent[2] - extent[0] + 2, extent[3] - extent[1] + 2
        smaller = min(px - 1, math.floor(px * min(width / ink_w, height / ink_h) * 0.95))
        if not style.shrink_to_fit or px <= MIN_FONT_PX:
            shown = text.replace("\n", " ")
            shown = shown if len(shown) <= 40 else shown[:39] + "…"
            raise AttackError(f"text '{shown}' ({wanted}px) does not fit in a {width}x{height} image")
        px = max(smaller, MIN_FONT_PX)


def _composite(
    clean: np.ndarray,
    text: str,
    style: LabelStyle,
    seed: int | None,
    label: LabelLayer,
    layout: _Layout,
    shift: tuple[int, int],
) -> Attack:
    """Warp the label into place and paint shadow, backing and glyphs over the photo."""
    height, width = clean.shape[:2]
    quad = layout.quad + np.asarray(shift, np.float64)
    strength = style.shadow_strength
    offset = max(1, round(0.06 * layout.font_px))
    sigma = max(0.6, 0.08 * layout.font_px)
    margin = 2 + (offset + math.ceil(3 * sigma) if strength > 0 else 0)
    x0 = max(0, math.floor(quad[:, 0].min()) - margin)
    y0 = max(0, math.floor(quad[:, 1].min()) - margin)
    x1 = min(width, math.ceil(quad[:, 0].max()) + margin)
    y1 = min(height, math.ceil(quad[:, 1].max()) + margin)
    size = (x1 - x0, y1 - y0)

    matrix = cv2.getPerspectiveTransform(
        source_corners(*label.size).astype(np.float32), (quad - (x0, y0)).astype(np.float32)
    )
    warp = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if style.kind == "text":
        glyph = cv2.warpPerspective(label.glyph, matrix, size, **warp)
        backing = np.zeros_like(glyph)
    else:
        both = cv2.warpPerspective(np.dstack([label.backing, label.glyph]), matrix, size, **warp)
        backing, glyph = both[:, :, 0], both[:, :, 1]
    glyph = scale_alpha(glyph, style.opacity)
    shadow = _drop_shadow(backing, offset, sigma, strength)

    region = clean[y0:y1, x0:x1].astype(np.int32)
    blank_region = over(over(region, (0, 0, 0), shadow), style.note_color, backing)
    attacked_region = over(blank_region, style.text_color, glyph)

    blank, attacked = clean.copy(), clean.copy()
    blank[y0:y1, x0:x1] = blank_region.astype(np.uint8)
    attacked[y0:y1, x0:x1] = attacked_region.astype(np.uint8)
    text_mask = np.zeros((height, width), bool)
    mask = np.zeros((height, width), bool)
    note_mask = np.zeros((height, width), bool)
    text_mask[y0:y1, x0:x1] = glyph > 0
    note_mask[y0:y1, x0:x1] = backing > 0
    mask[y0:y1, x0:x1] = (glyph > 0) | (backing > 0) | (shadow > 0)
    box = _bounding_box(mask)
    if box is None or not text_mask.any():
        raise AttackError(f"text '{text}' leaves no visible pixels at {layout.font_px}px")
    return Attack(
        clean=Image.fromarray(clean), attacked=Image.fromarray(attacked), blank=Image.fromarray(blank),
        mask=mask, text_mask=text_mask, box=box, text=text, style=style, seed=seed,
        note_mask=note_mask, font_px=layout.font_px, rotation=layout.rotation,
        perspective=layout.perspective,
    )


def _drop_shadow(backing: np.ndarray, offset: int, sigma: float, strength: float) -> np.ndarray:
    """Soft shadow (uint8 alpha) of ``backing`` shifted down-right by ``offset`` pixels."""
    if strength <= 0 or not backing.any():
        return np.zeros_like(backing)
    shifted = np.zeros_like(backing)
    shifted[offset:, offset:] = backing[:-offset, :-offset]
    blurred = cv2.GaussianBlur(shifted, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return scale_alpha(blurred, strength)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight end-exclusive (x0, y0, x1, y1) box of ``mask``; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
