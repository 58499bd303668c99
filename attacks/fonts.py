"""Locate the fonts that ship with matplotlib and load them with Pillow."""
from __future__ import annotations

import functools
import logging
import os
import unicodedata
from pathlib import Path

from PIL import ImageFont

from .errors import AttackError

logger = logging.getLogger(__name__)


def mpl_font_dir() -> Path:
    """Folder of the TrueType fonts in matplotlib's ``mpl-data``."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def mpl_font_path(name: str) -> str:
    """Path of the matplotlib font ``name`` (e.g. ``"DejaVuSerif-Italic"``; ``.ttf`` optional)."""
    file = name if name.lower().endswith((".ttf", ".otf")) else f"{name}.ttf"
    path = mpl_font_dir() / file
    if not path.is_file():
        raise AttackError(f"font {name!r} is not among matplotlib's fonts in {mpl_font_dir()}")
    return str(path)


def default_font_path() -> str:
    """Path of DejaVuSans, the font used when a style names none."""
    return mpl_font_path("DejaVuSans")


def bold_font_path() -> str:
    """Path of DejaVuSans-Bold, used for bold text when a style names no font."""
    return mpl_font_path("DejaVuSans-Bold")


@functools.lru_cache(maxsize=256)
def load_font(path: str, size_px: int) -> ImageFont.FreeTypeFont:
    """Load ``path`` at ``size_px`` pixels (cached); unreadable fonts raise AttackError."""
    if not os.path.exists(path):
        raise AttackError(f"cannot read font {path}: no such file")
    if not os.path.isfile(path):
        raise AttackError(f"cannot read font {path}: not a regular file (a font is a .ttf/.otf file)")
    try:
        return ImageFont.truetype(path, size_px)
    except OSError as e:
        raise AttackError(f"cannot read font {path}: {e}") from None


@functools.lru_cache(maxsize=64)
def font_codepoints(path: str) -> frozenset[int] | None:
    """The code points ``path``'s character map covers (None when fontTools cannot read the font)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception as e:  # a font Pillow reads but fontTools does not: leave it unchecked
        logger.debug("cannot read the character map of %s: %s", path, e)
        return None


def check_glyphs(text: str, path: str) -> None:
    """Raise AttackError naming the characters of ``text`` that the font at ``path`` has no glyph for
    (they would be drawn as empty boxes, e.g. an emoji in DejaVu Sans)."""
    covered = font_codepoints(path)
    if covered is None:
        return
    missing = [c for c in dict.fromkeys(text)
               if ord(c) not in covered and not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")]
    if missing:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:3])
        raise AttackError(f"font {os.path.basename(path)} has no glyph for {shown}; "
                          "pick a font that covers the text (attack and audit take one with --font)")
