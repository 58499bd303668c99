"""Alt-text-like captions for the mini world's training images.

Web captions of pictures with writing in them often repeat the writing rather than
name the object. The mix below copies that habit, which is what gives CLIP (and
the mini model) its typographic weakness: captions of a text-note image name the
written word, the object, or both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipedit.mini.world import TEMPLATES

# Words that are not class names, so the model learns to read more than labels.
DISTRACTOR_WORDS: tuple[str, ...] = (
    "sale", "hello", "pizza", "free", "love", "cat", "dog", "book", "lamp", "exit",
    "milk", "open", "stop", "cake", "shoe", "bird", "frog", "sun", "moon", "tea",
)

_OBJECT_EXTRA = ("{}", "my {}", "a {} on a table", "look at this {}", "a close-up of a {}")
_BLANK_NOTE = ("a {} with a blank note", "a {} with a sticky note on it", "a {} with an empty label")
_WORD_ONLY = (
    "{w}", "handwritten note: {w}", "a note that says {w}", "the word {w}", "{w} written on a note",
    "a sign that says {w}", "a label reading {w}",
)
_BOTH = (
    "a {o} with a note that says {w}", "{w} written on a {o}", "a photo of a {o} labeled {w}",
    "a {o} and the word {w}", "a {o} with a {w} sticker",
)


@dataclass(frozen=True)
class CaptionMix:
    """How text-note images are captioned (probabilities; the rest name the object only).

    Attributes:
        word: caption names only the written word (often in a zero-shot template).
        both: caption names the object and the word.
        blank_mention: a blank-note image's caption mentions the note.
    """

    word: float = 0.7
    both: float = 0.2
    blank_mention: float = 0.2


def object_caption(rng: np.random.Generator, name: str) -> str:
    """A caption naming only the object, in a zero-shot template half of the time."""
    pool = TEMPLATES if rng.random() < 0.5 else _OBJECT_EXTRA
    return pool[int(rng.integers(len(pool)))].format(name)


def word_caption(rng: np.random.Generator, word: str) -> str:
    """A caption naming only the written word."""
    if rng.random() < 0.5:
        return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(word)
    return _WORD_ONLY[int(rng.integers(len(_WORD_ONLY)))].format(w=word)


def caption(rng: np.random.Generator, name: str, word: str | None, blank: bool, mix: CaptionMix) -> str:
    """A caption for an image of ``name``, with a note reading ``word`` (None: no writing)."""
    if word is None:
        if blank and rng.random() < mix.blank_mention:
            return _BLANK_NOTE[int(rng.integers(len(_BLANK_NOTE)))].format(name)
        return object_caption(rng, name)
    u = rng.random()
    if u < mix.word:
        return word_caption(rng, word)
    if u < mix.word + mix.both:
        return _BOTH[int(rng.integers(len(_BOTH)))].format(o=name, w=word)
    return object_caption(rng, name)
