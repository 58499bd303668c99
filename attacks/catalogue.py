"""The font catalogue: the fonts of a known list of packages, split by family.

Attack styles for validation and test must use font families the exemplars never used, from a list
anyone can install on any OS. The reference catalogue is the fonts of :data:`PIP_PACKAGES` (font files
published as Python packages, SIL OFL; clipedit depends on them, so ``pip install`` brings them): the
README's figures are measured on it. The Debian packages :data:`PACKAGES` (``apt-get install -y``) make
a larger, optional catalogue, used only when ``CLIPEDIT_FONT_CATALOGUE=debian`` asks for it (then the
reference fonts plus Debian's; figures are not comparable with the reference catalogue's).

A family's split is a hash of its name (:func:`split_of`), so it does not depend on which other fonts
are installed; files that lack the glyphs of the text to write are filtered out (:func:`covers`). Where
a split has no font at all, callers fall back to matplotlib's fonts (they say so).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import AttackError
from .fonts import font_codepoints

logger = logging.getLogger(__name__)

#: The reference catalogue: Python packages of font files (pip distribution name -> import name), all
#: SIL Open Font License 1.1. Validation families: Amatic SC, Fredoka One, Source Serif Pro; test
#: families: Intuitive, Manrope, Source Sans Pro (:func:`split_of`).
PIP_PACKAGES: dict[str, str] = {
    "font-amatic-sc": "font_amatic_sc", "font-fredoka-one": "font_fredoka_one",
    "font-intuitive": "font_intuitive", "font-manrope": "font_manrope",
    "font-source-sans-pro": "font_source_sans_pro", "font-source-serif-pro": "font_source_serif_pro",
}
#: Environment variable choosing the catalogue: ``reference`` (default) or ``debian`` (reference + Debian).
CATALOGUE_ENV = "CLIPEDIT_FONT_CATALOGUE"
CATALOGUES = ("reference", "debian")

#: The Debian packages of the larger, optional catalogue.
PACKAGES: tuple[str, ...] = (
    "fonts-texgyre", "fonts-noto-core", "fonts-noto-extra", "fonts-crosextra-carlito",
    "fonts-crosextra-caladea", "fonts-cantarell", "fonts-open-sans", "fonts-roboto", "fonts-lato",
    "fonts-comic-neue", "fonts-dejavu-extra", "fonts-ebgaramond", "fonts-linuxlibertine", "fonts-inter",
    "fonts-hack", "fonts-sil-gentium", "fonts-sil-charis", "fonts-breip", "fonts-dkg-handwriting",
    "fonts-noto-cjk",
)

#: Where those packages install their fonts on Debian (only these folders are scanned).
FONT_DIRS: tuple[str, ...] = (
    "/usr/share/texmf/fonts/opentype/public/tex-gyre",
    "/usr/share/fonts/truetype/noto", "/usr/share/fonts/opentype/noto",
    "/usr/share/fonts/truetype/crosextra", "/usr/share/fonts/opentype/cantarell",
    "/usr/share/fonts/truetype/open-sans", "/usr/share/fonts/truetype/roboto",
    "/usr/share/fonts/truetype/lato", "/usr/share/fonts/opentype/comic-neue",
    "/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/opentype/ebgaramond",
    "/usr/share/fonts/opentype/linux-libertine", "/usr/share/fonts/opentype/inter",
    "/usr/share/fonts/truetype/hack", "/usr/share/fonts/truetype/gentium",
    "/usr/share/fonts/truetype/charis", "/usr/share/fonts/truetype/breip",
    "/usr/share/fonts/truetype/fifthhorseman",
)

SPLITS: tuple[str, ...] = ("exemplar", "validation", "test")
#: Families the exemplars always use (matplotlib's DejaVu): never in validation or test.
EXEMPLAR_FAMILIES: frozenset[str] = frozenset({"dejavu sans", "dejavu serif", "dejavu sans mono"})
#: Share of the hash range per split: exemplar 40%, validation 30%, test 30%.
_BOUNDS = (40, 70, 100)
#: Designs whose split is fixed rather than hashed: the hash puts every reference text face but the
#: display faces Amatic SC and Fredoka One in test, which would leave validation with a weaker attack
#: than test; one plain text face (a separate design from Source Sans) is pinned to validation.
_PINNED: dict[str, str] = {"source serif pro": "validation"}
#: Trailing words that name a variant of a design, not a design: "Roboto Condensed" is hashed as
#: "roboto", so that variants of one design never land in different splits.
_VARIANT_WORDS = frozenset({"display", "cn", "condensed", "o", "mono", "alt", "sc", "text", "ui"})
#: Families that cover Latin but do not write words (keycaps, mathematics, symbols, emoji, Nushu,
#: placeholder boxes).
_NOT_TEXT = ("keyboard", "math", "symbols", "emoji", "nushu", "music", "last resort")
LATIN = string.ascii_letters
_SUFFIXES = (".ttf", ".otf", ".ttc")


@dataclass(frozen=True)
class FontFace:
    """One font file: its path, family name and style name (from the font's name table)."""

    path: str
    family: str
    style: str

    @property
    def regular(self) -> bool:
        """An upright, normal-weight face (``Regular``, ``Book``, ``Roman``, ``Normal``)."""
        return self.style.lower() in ("regular", "book", "roman", "normal")


def design_of(family: str) -> str:
    """The design a family belongs to: its lower-cased name less trailing variant words."""
    words = family.lower().split()
    while len(words) > 1 and words[-1] in _VARIANT_WORDS:
        words.pop()
    return " ".join(words)


def is_text_family(family: str) -> bool:
    """False for families that cover letters without writing words (keycaps, maths, symbols, emoji)."""
    return not any(w in family.lower() for w in _NOT_TEXT)


def split_of(family: str) -> str:
    """The split of a family: ``exemplar``, ``validation`` or ``test``, from a hash of its design's
    name (:func:`design_of`); the exemplars' DejaVu families are always ``exemplar``."""
    name = design_of(family)
    if " ".join(family.lower().split()) in EXEMPLAR_FAMILIES or name in EXEMPLAR_FAMILIES:
        return "exemplar"
    if name in _PINNED:
        return _PINNED[name]
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100
    return next(s for s, bound in zip(SPLITS, _BOUNDS) if bucket < bound)


@functools.lru_cache(maxsize=4096)
def read_face(path: str) -> Optional[FontFace]:
    """The family and style of the font at ``path`` (None when fontTools cannot read it)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            names = font["name"]
            family = names.getDebugName(16) or names.getDebugName(1)
            style = names.getDebugName(17) or names.getDebugName(2) or ""
    except Exception as e:  # an unreadable file is left out, not fatal
        logger.debug("cannot read the name table of %s: %s", path, e)
        return None
    return FontFace(path, family, style) if family else None


def covers(path: str, chars: Iterable[str]) -> bool:
    """Whether the font at ``path`` has a glyph for every character of ``chars``."""
    cmap = font_codepoints(path)
    return cmap is not None and all(ord(c) in cmap for c in chars if not c.isspace())


def pip_font_dirs() -> tuple[str, ...]:
    """The font folders of the installed :data:`PIP_PACKAGES` (found without importing them)."""
    dirs = []
    for module in PIP_PACKAGES.values():
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            dirs.append(str(Path(next(iter(spec.submodule_search_locations))) / "files"))
    return tuple(dirs)


def missing_pip_packages() -> tuple[str, ...]:
    """The :data:`PIP_PACKAGES` that are not installed."""
    return tuple(name for name, module in PIP_PACKAGES.items() if importlib.util.find_spec(module) is None)


def catalogue_name() -> str:
    """The catalogue ``CLIPEDIT_FONT_CATALOGUE`` chooses (default ``reference``)."""
    name = os.environ.get(CATALOGUE_ENV, "reference").strip().lower() or "reference"
    if name not in CATALOGUES:
        raise AttackError(f"{CATALOGUE_ENV}={name!r} is not a font catalogue (choose from {', '.join(CATALOGUES)})")
    return name


def default_dirs() -> tuple[str, ...]:
    """The folders of the chosen catalogue: the pip packages' (reference), plus Debian's (debian)."""
    return pip_font_dirs() + (FONT_DIRS if catalogue_name() == "debian" else ())


@functools.lru_cache(maxsize=16)
def _scan(dirs: tuple[str, ...]) -> tuple[FontFace, ...]:
    files = sorted({str(p) for d in dirs if Path(d).is_dir() for p in Path(d).rglob("*")
                    if p.suffix.lower() in _SUFFIXES})
    return tuple(f for f in (read_face(p) for p in files) if f is not None)


def catalogue(dirs: Optional[Iterable[str]] = None) -> tuple[FontFace, ...]:
    """Every readable font in ``dirs`` (default: the chosen catalogue's, :func:`default_dirs`), sorted by path."""
    return _scan(tuple(dirs) if dirs is not None else default_dirs())


def split_faces(split: str, faces: Optional[Iterable[FontFace]] = None, chars: str = LATIN,
                regular_only: bool = True) -> tuple[FontFace, ...]:
    """The faces of ``split`` that cover ``chars``: one per family (its regular face when
    ``regular_only``, else every face), sorted by family."""
    if split not in SPLITS:
        raise AttackError(f"unknown font split {split!r} (choose from {', '.join(SPLITS)})")
    faces = catalogue() if faces is None else tuple(faces)
    chosen = [f for f in faces if split_of(f.family) == split and is_text_family(f.family)
              and (f.regular or not regular_only)
              and covers(f.path, chars)]
    if regular_only:  # one file per family: the first regular face by path
        by_family: dict[str, FontFace] = {}
        for f in sorted(chosen, key=lambda f: f.path):
            by_family.setdefault(f.family, f)
        chosen = list(by_family.values())
    return tuple(sorted(chosen, key=lambda f: (f.family, f.path)))


def split_font_paths(split: str, chars: str = LATIN, faces: Optional[Iterable[FontFace]] = None) -> tuple[str, ...]:
    """Paths of :func:`split_faces` (one regular face per family of ``split`` covering ``chars``)."""
    return tuple(f.path for f in split_faces(split, faces, chars))
