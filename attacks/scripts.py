"""Writing systems other than Latin: which font writes a script, letter-by-letter transliteration of a
Latin word into it, and the check that complex scripts are shaped (Pillow's raqm layout engine).

Arabic letters join and change form, Devanagari reorders and stacks; drawn glyph by glyph without a
shaping engine they come out wrong. Pillow shapes with libraqm when it has it
(``PIL.features.check('raqm')``); without it, writing such a script raises :class:`AttackError`.
"""
from __future__ import annotations

import functools
import logging
import unicodedata

from PIL import features

from .catalogue import FONT_DIRS, FontFace, catalogue, covers
from .errors import AttackError
from .fonts import default_font_path

logger = logging.getLogger(__name__)

#: Per script: Unicode name prefix of its letters, whether it needs shaping, preferred catalogue
#: families (first installed one wins), and one character per Latin letter a-z (a transliteration
#: that writes a Latin word in the script's letters, for audits of words the model knows in Latin).
SCRIPTS: dict[str, dict] = {
    "latin": {"prefix": ("LATIN",), "shaping": False, "families": ("Noto Sans",),
              "letters": "abcdefghijklmnopqrstuvwxyz"},
    "cyrillic": {"prefix": ("CYRILLIC",), "shaping": False, "families": ("Noto Sans",),
                 "letters": "абцдефгхийклмнопкрстуввжыз"},
    "greek": {"prefix": ("GREEK",), "shaping": False, "families": ("Noto Sans",),
              "letters": "αβψδεφγηιξκλμνοπθρστυβωχυζ"},
    "arabic": {"prefix": ("ARABIC",), "shaping": True, "families": ("Noto Sans Arabic", "Noto Naskh Arabic"),
               "letters": "ابكدعفغهيجكلمنوبقرستوفوكيز"},
    "hebrew": {"prefix": ("HEBREW",), "shaping": True, "families": ("Noto Sans Hebrew", "Noto Serif Hebrew"),
               "letters": "אבצדעפגהיגקלמנופקרסטובוכיז"},
    "devanagari": {"prefix": ("DEVANAGARI",), "shaping": True,
                   "families": ("Noto Sans Devanagari", "Noto Serif Devanagari"),
                   "letters": "अबचदएफगहइजकलमनओपकरसतउववकयज"},
    "cjk": {"prefix": ("CJK UNIFIED", "KATAKANA", "HIRAGANA", "HANGUL"), "shaping": False,
            "families": ("Noto Sans CJK JP", "Noto Serif CJK JP"),
            "letters": "アブクドエフグハイジカルムヌオプクルストウヴワクユズ"},
}


def _check_script(script: str) -> dict:
    try:
        return SCRIPTS[script]
    except KeyError:
        raise AttackError(f"unknown script {script!r} (choose from {', '.join(SCRIPTS)})") from None


def script_of(char: str) -> str | None:
    """The :data:`SCRIPTS` name a letter belongs to (None for digits, punctuation, other scripts)."""
    name = unicodedata.name(char, "")
    return next((s for s, spec in SCRIPTS.items() if name.startswith(spec["prefix"])), None)


def needs_shaping(text: str) -> bool:
    """Whether ``text`` holds letters of a script that must be shaped (Arabic, Hebrew, Devanagari)."""
    return any(SCRIPTS[s]["shaping"] for s in {script_of(c) for c in text} if s)


def check_shaping(text: str) -> None:
    """Raise AttackError when ``text`` needs shaping and Pillow has no raqm layout engine."""
    if needs_shaping(text) and not features.check("raqm"):
        raise AttackError("this text needs shaping (joined or reordered letters), but Pillow has no raqm "
                          "layout engine: install libraqm (apt-get install -y libraqm0) and reinstall Pillow")


def transliterate(word: str, script: str) -> str:
    """``word`` in ``script``: Latin letters replaced one by one (other characters kept); a word
    already in the script is returned as it is."""
    letters = _check_script(script)["letters"]
    table = {ord(a): b for a, b in zip("abcdefghijklmnopqrstuvwxyz", letters)}
    return word.lower().translate(table) if any(script_of(c) == "latin" for c in word) else word


def writing(words: list[str], script: str | None, font: str | None) -> tuple[list[str], str | None]:
    """The words and font to write with: ``words`` transliterated into ``script`` (when given) and
    ``font``, else the script's font (:func:`script_font`), else None (the caller's default)."""
    if script is None:
        return words, font
    return [transliterate(w, script) for w in words], font or script_font(script)


def sample_chars(script: str) -> str:
    """The characters a font must cover to write ``script`` (its transliteration alphabet)."""
    return _check_script(script)["letters"]


@functools.lru_cache(maxsize=16)
def script_font(script: str) -> str:
    """Path of a font that writes ``script``: the first installed preferred catalogue family, else any
    catalogue regular face covering it, else matplotlib's DejaVu Sans when it does (Latin, Cyrillic,
    Greek, Arabic, Hebrew); AttackError when no installed font covers the script."""
    chars = sample_chars(script)
    # Debian's fonts only (Noto for every script): the pip packages write Latin alone, and their families
    # belong to the validation and test splits
    faces: tuple[FontFace, ...] = catalogue(FONT_DIRS)
    families = _check_script(script)["families"]
    for family in families:
        for face in faces:
            if face.family == family and face.regular and covers(face.path, chars):
                return face.path
    for face in faces:
        if face.regular and covers(face.path, chars):
            return face.path
    if covers(default_font_path(), chars):
        logger.info("no catalogue font writes %s: using DejaVu Sans", script)
        return default_font_path()
    raise AttackError(f"no installed font writes {script}: apt-get install -y "
                      f"{'fonts-noto-cjk' if script == 'cjk' else 'fonts-noto-core'} (attack and audit also take a "
                      "font file with --font)")
