"""Typographic attack generator: words on notes, stickers or bare, with exact pixel masks."""
from .batch import render_batch
from .errors import AttackError
from .fonts import default_font_path, mpl_font_path
from .render import Attack, render_attack
from .sampler import StyleSampler
from .style import LabelStyle

__all__ = [
    "Attack",
    "AttackError",
    "LabelStyle",
    "StyleSampler",
    "default_font_path",
    "mpl_font_path",
    "render_attack",
    "render_batch",
]
