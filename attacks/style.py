"""LabelStyle: how a word is drawn onto a photograph."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import AttackError

KINDS = ("note", "sticker", "text")
POSITIONS = ("random", "center", "object")

Color = tuple[int, int, int]


@dataclass(frozen=True)
class LabelStyle:
    """Appearance and placement of one label.

    Attributes:
        kind: "note" (paper with a drop shadow), "sticker" (rounded, light shadow) or
            "text" (bare glyphs, no backing).
        font: Path to a TTF/OTF font; None means matplotlib's DejaVuSans.
        font_size: Below 1: fraction of min(image H, W); 1 or more: pixels.
        text_color: Ink colour (RGB).
        note_color: Colour of the note or sticker (RGB).
        position: "random", "center", "object" (inside the object box) or (cx, cy)
            as fractions of W and H.
        rotation: Degrees, counter-clockwise.
        perspective: Strength 0..0.9 of a random perspective warp (corners move
            inward by up to this fraction of half the label size).
        opacity: Text opacity in (0, 1].
        padding: Note margin around the text, as a fraction of the font size.
        bold: Bold text (DejaVuSans-Bold without a font, else a thin stroke).
        shadow: Drop-shadow strength 0..1; None uses the kind's default.
        shrink_to_fit: Shrink the font when the text does not fit instead of raising.
    """

    kind: str = "note"
    font: str | None = None
    font_size: float = 0.12
    text_color: Color = (20, 20, 20)
    note_color: Color = (250, 250, 245)
    position: str | tuple[float, float] = "random"
    rotation: float = 0.0
    perspective: float = 0.0
    opacity: float = 1.0
    padding: float = 0.35
    bold: bool = False
    shadow: float | None = None
    shrink_to_fit: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AttackError(f"label kind {self.kind!r} is not one of {', '.join(KINDS)}")
        _check_range("opacity", self.opacity, 0.0, 1.0, low_open=True)
        _check_range("font_size", self.font_size, 0.0, MAX_FONT_PIXELS, low_open=True)
        _check_range("perspective", self.perspective, 0.0, 0.9)
        _check_range("padding", self.padding, 0.0, 10.0)
        _check_range("rotation", self.rotation, -3600.0, 3600.0)
        if self.shadow is not None:
            _check_range("shadow", self.shadow, 0.0, 1.0)
        object.__setattr__(self, "text_color", _color("text_color", self.text_color))
        object.__setattr__(self, "note_color", _color("note_color", self.note_color))
        object.__setattr__(self, "position", _position(self.position))

    @property
    def shadow_strength(self) -> float:
        """Shadow strength actually used (kind default when ``shadow`` is None)."""
        if self.kind == "text":
            return 0.0
        if self.shadow is not None:
            return float(self.shadow)
        return 0.45 if self.kind == "note" else 0.25


MAX_FONT_PIXELS = 4096.0  # font_size at or above 1 is in pixels; more than this is no label Pillow can draw


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AttackError(f"{name} must be a number, got {value!r}") from None
    too_low = v <= low if low_open else v < low
    if not math.isfinite(v) or too_low or v > high:
        bracket = "(" if low_open else "["
        raise AttackError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")


def _color(name: str, value) -> Color:
    try:
        rgb = tuple(int(c) for c in value)
    except (TypeError, ValueError):
        raise AttackError(f"{name} must be an (R, G, B) triple, got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise AttackError(f"{name} must be an (R, G, B) triple of 0..255, got {value!r}")
    return rgb  # type: ignore[return-value]


def _position(value) -> str | tuple[float, float]:
    if isinstance(value, str):
        if value not in POSITIONS:
            raise AttackError(f"position {value!r} is not one of {', '.join(POSITIONS)} or (cx, cy)")
        return value
    try:
        cx, cy = (float(v) for v in value)
    except (TypeError, ValueError):
        raise AttackError(f"position must be a name or (cx, cy) fractions, got {value!r}") from None
    if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
        raise AttackError(f"position fractions must lie in [0, 1], got {value!r}")
    return (cx, cy)
