"""StyleSampler: ranges of label styles to draw from, with exemplar and held-out presets."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AttackError
from .fonts import mpl_font_path
from .style import KINDS, LabelStyle

Color = tuple[int, int, int]

EXEMPLAR_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono")
HELDOUT_FONTS = ("DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralBol", "cmr10", "cmss10", "cmtt10")

EXEMPLAR_TEXT_COLORS: tuple[Color, ...] = ((20, 20, 20), (25, 45, 150), (165, 25, 25), (45, 45, 70))
HELDOUT_TEXT_COLORS: tuple[Color, ...] = ((75, 20, 115), (10, 90, 80), (105, 60, 20), (90, 90, 90))
EXEMPLAR_NOTE_COLORS: tuple[Color, ...] = ((250, 250, 245), (255, 242, 140), (252, 200, 215), (238, 230, 210))
HELDOUT_NOTE_COLORS: tuple[Color, ...] = ((205, 240, 200), (200, 225, 250), (255, 205, 150), (225, 210, 245))


def mpl_fonts(names: tuple[str, ...]) -> tuple[str, ...]:
    """Paths of matplotlib's fonts ``names``."""
    return tuple(mpl_font_path(n) for n in names)


@dataclass(frozen=True)
class StyleSampler:
    """Ranges from which ``sample`` draws LabelStyles; (lo, hi) pairs are drawn uniformly.

    Attributes:
        kinds: Label kinds to choose from.
        fonts: Font paths to choose from (None: DejaVuSans).
        font_size: Range of font sizes (fractions of min(H, W) below 1, else pixels).
        rotation: Range of rotations in degrees.
        perspective: Range of perspective strengths.
        opacity: Range of text opacities.
        padding: Range of note margins (fraction of font size).
        text_colors: Ink colours to choose from.
        note_colors: Note and sticker colours to choose from.
        position: Position given to every style.
        bold_prob: Probability of bold text.
        shrink_to_fit: Passed to the styles: shrink long words instead of raising.
    """

    kinds: tuple[str, ...] = ("note", "sticker")
    fonts: tuple[str | None, ...] = (None,)
    font_size: tuple[float, float] = (0.10, 0.18)
    rotation: tuple[float, float] = (-15.0, 15.0)
    perspective: tuple[float, float] = (0.0, 0.15)
    opacity: tuple[float, float] = (0.85, 1.0)
    padding: tuple[float, float] = (0.25, 0.5)
    text_colors: tuple[Color, ...] = EXEMPLAR_TEXT_COLORS
    note_colors: tuple[Color, ...] = EXEMPLAR_NOTE_COLORS
    position: str | tuple[float, float] = "random"
    bold_prob: float = 0.0
    shrink_to_fit: bool = True

    def __post_init__(self) -> None:
        for name in ("kinds", "fonts", "text_colors", "note_colors"):
            if len(getattr(self, name)) == 0:
                raise AttackError(f"StyleSampler.{name} is empty")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise AttackError(f"StyleSampler.kinds has unknown kinds {bad}")

    @classmethod
    def exemplar(cls, **overrides) -> StyleSampler:
        """Styles for building edits: DejaVu Sans/Serif/Mono, sizes 0.10-0.18, common inks and papers."""
        return cls(**{"fonts": mpl_fonts(EXEMPLAR_FONTS), **overrides})

    @classmethod
    def heldout(cls, **overrides) -> StyleSampler:
        """Styles for evaluation that share no font, size or colour with ``exemplar()``."""
        preset = dict(
            kinds=("note", "sticker", "text"),
            fonts=mpl_fonts(HELDOUT_FONTS),
            font_size=(0.19, 0.26),
            rotation=(-25.0, 25.0),
            perspective=(0.0, 0.25),
            text_colors=HELDOUT_TEXT_COLORS,
            note_colors=HELDOUT_NOTE_COLORS,
        )
        return cls(**{**preset, **overrides})

    def sample(self, rng: np.random.Generator) -> LabelStyle:
        """Draw one LabelStyle (always the same number of draws from ``rng``)."""
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        font = self.fonts[int(rng.integers(len(self.fonts)))]
        font_size = float(rng.uniform(*self.font_size))
        text_color = self.text_colors[int(rng.integers(len(self.text_colors)))]
        note_color = self.note_colors[int(rng.integers(len(self.note_colors)))]
        rotation = float(rng.uniform(*self.rotation))
        perspective = float(rng.uniform(*self.perspective))
        opacity = float(rng.uniform(*self.opacity))
        padding = float(rng.uniform(*self.padding))
        bold = bool(rng.random() < self.bold_prob)
        return LabelStyle(
            kind=kind, font=font, font_size=font_size, text_color=text_color, note_color=note_color,
            position=self.position, rotation=rotation, perspective=perspective, opacity=opacity,
            padding=padding, bold=bold, shrink_to_fit=self.shrink_to_fit,
        )
