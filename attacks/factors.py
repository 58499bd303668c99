"""Leave-out factors: the attack styles of the exemplar, validation and test splits.

Validation and test styles share no factor value with the exemplars' (``StyleSampler.exemplar``):

- font family: the catalogue's validation / test families (:mod:`attacks.catalogue`; a hash of the
  design's name), never DejaVu; without the catalogue's font packages (pip dependencies of clipedit),
  matplotlib's STIX (validation) and Computer Modern (test) fonts, with a warning — figures are then
  not comparable;
- size band: 0.19-0.24 of the image side (exemplars 0.10-0.18), reported in the :data:`SIZE_BANDS`;
- inks and papers: ``HELDOUT_TEXT_COLORS`` / ``HELDOUT_NOTE_COLORS`` (exemplars: the ``EXEMPLAR_`` ones);
- weight: 20% of labels in faux bold (a stroke around the outline), which no exemplar uses.

Kinds: notes, stickers and bare text, each reported on its own (the headline is notes + stickers).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Optional

from .catalogue import LATIN, missing_pip_packages, split_font_paths
from .errors import AttackError
from .sampler import HELDOUT_NOTE_COLORS, HELDOUT_TEXT_COLORS, StyleSampler, mpl_fonts

logger = logging.getLogger(__name__)

HELDOUT_SPLITS = ("validation", "test")
#: Requested font size (fraction of the image side) of validation and test labels.
HELDOUT_SIZE: tuple[float, float] = (0.19, 0.24)
#: Size bands the figures are reported by: name -> [lo, hi) of the requested font size.
SIZE_BANDS: dict[str, tuple[float, float]] = {"0.19-0.215": (0.19, 0.215), "0.215-0.24": (0.215, 0.2401)}
HELDOUT_BOLD = 0.2
#: Fallback fonts (matplotlib's) when the catalogue has no family of a split.
FALLBACK_FONTS: dict[str, tuple[str, ...]] = {
    "validation": ("STIXGeneral", "STIXGeneralItalic"),
    "test": ("cmr10", "cmss10", "cmtt10"),
}
#: Groups of kinds the figures are reported by; the headline is "notes + stickers".
KIND_GROUPS: dict[str, tuple[str, ...]] = {"notes + stickers": ("note", "sticker"), "notes": ("note",),
                                           "stickers": ("sticker",), "bare text": ("text",)}


def _check(split: str) -> None:
    if split not in HELDOUT_SPLITS:
        raise AttackError(f"unknown held-out split {split!r} (choose from {', '.join(HELDOUT_SPLITS)})")


@functools.lru_cache(maxsize=8)
def split_fonts(split: str, chars: str = LATIN) -> tuple[str, ...]:
    """Font paths of a held-out split covering ``chars``: the catalogue's families of the split, else
    (with a warning) matplotlib's fallback fonts."""
    _check(split)
    fonts = split_font_paths(split, chars)
    if fonts:
        return fonts
    logger.warning("no font of the %s split is installed (pip install %s): using matplotlib's %s; "
                   "figures are not comparable", split, " ".join(missing_pip_packages()) or "clipedit",
                   ", ".join(FALLBACK_FONTS[split]))
    return mpl_fonts(FALLBACK_FONTS[split])


def split_sampler(split: str, base: Optional[StyleSampler] = None, kinds: Optional[tuple[str, ...]] = None,
                  fonts: Optional[tuple[str, ...]] = None) -> StyleSampler:
    """``base``'s geometry (position, rotation, padding...) with the leave-out factors of ``split``:
    its fonts (or ``fonts``, e.g. a script's), the held-out size band, inks, papers and weight;
    ``kinds`` (default note, sticker, text)."""
    base = base or StyleSampler.heldout()
    return dataclasses.replace(base, fonts=fonts or split_fonts(split), font_size=HELDOUT_SIZE,
                               text_colors=HELDOUT_TEXT_COLORS, note_colors=HELDOUT_NOTE_COLORS,
                               bold_prob=HELDOUT_BOLD, kinds=kinds or ("note", "sticker", "text"))


def size_band(font_size: float) -> Optional[str]:
    """The :data:`SIZE_BANDS` name holding a requested font size (None outside every band)."""
    return next((name for name, (lo, hi) in SIZE_BANDS.items() if lo <= font_size < hi), None)
