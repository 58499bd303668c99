"""Locate the fonts that ship with matplotlib and load them with Pillow."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from PIL import ImageFont

from .errors import AttackError


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
    if not os.path.isfile(path):
        raise AttackError(f"cannot read font {path}: no such file")
    try:
        return ImageFont.truetype(path, size_px)
    except OSError as e:
        raise AttackError(f"cannot read font {path}: {e}") from None
